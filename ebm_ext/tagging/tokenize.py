"""Tokenisation of raw tweet text the way the tweet POS corpus (twpos) was tokenised.

The corpus was tokenised by twokenize (O'Connor, Krieger and Ahn 2010; ark-tweet-nlp's
Twokenize), then corrected by hand. Its conventions, read off the corpus and matched here:

- URLs (with or without a scheme: ``http://t.co/x``, ``www.x.com``, ``bit.ly/x``), e-mail
  addresses, @-mentions and #hashtags are single tokens; trailing sentence punctuation is split
  off a URL (``see http://x.com.`` -> ``http://x.com``, ``.``).
- Emoticons are single tokens, western (``:)``, ``;-p``, ``:'(``, ``=]``, ``xD``, ``D:``,
  ``(:``) and eastern (``-_-``, ``^_^``, ``o_O``), as are hearts (``<3``, ``</3``) and arrows
  (``-->``, ``<<``).
- Contractions and possessives stay whole (``don't``, ``I'm``, ``y'all``, ``SUV's``): the tagset
  has combined tags (L, Y, S, Z, M) for them. So do hyphenated words (``Kool-Aid``).
- Runs of punctuation are one token (``!!!``, ``...``, ``?!?``, ``..."``), and punctuation is
  split off the edges of words (``gr8!!`` -> ``gr8``, ``!!``; ``"hi"`` -> ``"``, ``hi``, ``"``).
- Numbers with their separators (``8:30``, ``1,000``, ``$5.99``, ``88%``) and abbreviations
  (``U.S.``, ``p.m.``, ``Mr.``) are single tokens.
- HTML entities of the Twitter API's text are unescaped first (``&amp;`` -> ``&``), as
  ark-tweet-nlp does before tagging.

Written from these conventions (and twokenize's description in Owoputi et al. 2013), not from
twokenize's source. ``python python/compare_tokenizers.py`` measures it against the candidates
on the corpus (docs/guides/tagger.md, "Raw tweets").
"""
from __future__ import annotations

import html
import re

_TLDS = "com|net|org|edu|gov|info|biz|co|ly|me|gd|bz|tv|us|uk|ca|de|fm|io|am|to|tk|in|it|nl|es"
# Punctuation that a URL or a word may be followed by in running text and that is not part of it.
_TRAILING = r"""[.,!?;:'"’”)\]}>…]"""
# A word character: Python's \w lacks the combining marks (Thai vowel signs, Arabic harakat,
# strike-through U+0336), which belong to the letter before them.
_MARKS = ("\u0300-\u036f\u0483-\u0489\u0591-\u05c7\u0610-\u061a\u064b-\u065f\u0670"
          "\u06d6-\u06ed\u0900-\u0903\u093a-\u094f\u0e31\u0e34-\u0e3a\u0e47-\u0e4e"
          "\u1ab0-\u1aff\u200c\u200d\u20d0-\u20ff\ufe20-\ufe2f")
_W = rf"[\w{_MARKS}]"
# Letters, digits and underscores joined inside by apostrophes, hyphens and slashes (don't,
# Kool-Aid, he/she, b/c).
_CORE = rf"{_W}+(?:['’/-]{_W}+)*"

_PATTERNS = [
    # URLs: a scheme or www., or a bare domain with a known top-level domain; the trailing
    # punctuation of a sentence is left out.
    ("url", rf"""(?:(?:https?|ftp)://|www\.)[^\s]+?(?={_TRAILING}*$)"""
            rf"""|(?<![\w@.])(?:[\w-]+\.)+(?:{_TLDS})(?![\w])(?:/[^\s]*?)?(?={_TRAILING}*$)"""),
    ("email", r"(?<![\w.])[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
    ("mention", r"(?<![\w@])@\w+(?:['’]\w+)?"),
    ("hashtag", r"(?<![\w#&])#\w+"),
    # A check-in's "(@ place)", which the corpus keeps as one token.
    ("checkin", r"\(@(?!\w)"),
    # Numbers with separators, currency and percent (8:30, 1,000, $5.99, 88%): before the
    # emoticons, so 8:30 is a time. One followed by letters (1st, 10/30's) is a word.
    ("number", r"(?<![\w.])[$£€]?\d+(?:[-.,:/]\d+)*%?(?![\w'’]|[-.,:/]\d)"),
    # Eastern emoticons: eyes, an underscore mouth, eyes.
    ("eastern", r"(?<!\w)[-^oO0T;=*><.'xX@$]_+[-^oO0T;=*<.'xX@$](?!\w)"),
    # Western emoticons, eyes-nose-mouth and (reversed) mouth-nose-eyes. Letter eyes and mouths
    # (x, 8, D, P, S, 3, O) must stand apart from words: xD is a face, xDream is not.
    ("western", r"(?:(?<![\w])[xX8]|[:;=])['’´`^o-]?(?:[)\](\[dDpP/\\|}{@*3$#sSoO0]+)(?![\w])"
                r"|(?<![\w])[)\](\[dD/\\|][-'’´`^o]?[:;=](?![\w)(\[\]])"),
    ("heart", r"</?3+(?!\d)|[♥❤]+"),
    ("arrow", r"<-+|-+>|<=+|=+>|<{2,}|>{2,}"),
    ("abbreviation", r"(?<!\w)(?:[A-Za-z]\.){2,}|(?<!\w)(?i:w/o?)(?!\w)"
                     r"|(?<!\w)(?i:mr|mrs|ms|dr|st|sen|jr|sr|vs|prof|gov|lt|capt"
                     r"|sgt)\.(?=$)"),
    # Words. As in the corpus: a signature's leading hyphen (-Drake) and a trailing one (re-)
    # stay on the word, and so do curly quotes and an ellipsis, which twokenize did not split
    # off ("Girls’", "love…"); ASCII punctuation is split off the edges.
    ("word", rf"(?:(?<!\S)-(?=[^\W\d_]))?[“‘]*{_CORE}[”’…]*(?:-(?=$))?"),
    ("punctuation", r"""[.!?,:;"“”‘’'…]+"""),
    ("repeated", r"(?P<mark>[^\w\s])(?P=mark)+"),
    ("other", r"[^\w\s]"),
]
_TOKEN = re.compile("|".join(f"(?P<{name}>{pattern})" for name, pattern in _PATTERNS))


def tokenize_tweet(text: str) -> list[str]:
    """The tokens of one raw tweet, in the tweet corpus's conventions (the module's docstring).

    Args:
        text (str): the tweet.

    Returns:
        list[str]: its tokens; no character is lost or invented except whitespace.

    Example:
        >>> from ebm_ext.tagging.tokenize import tokenize_tweet
        >>> tokenize_tweet("lol @bob this is gr8!! http://t.co/x :)")
        ['lol', '@bob', 'this', 'is', 'gr8', '!!', 'http://t.co/x', ':)']
    """
    text = html.unescape(text)
    tokens = []
    for chunk in text.split():
        position = 0
        while position < len(chunk):
            match = _TOKEN.match(chunk, position)
            if match is None or match.end() == position:  # cannot happen: "other" takes any char
                tokens.append(chunk[position])
                position += 1
                continue
            tokens.append(match.group())
            position = match.end()
    return tokens


def tokenize(line: str, pretokenized: bool = False) -> list[str]:
    """A line of raw text as tokens.

    Args:
        line (str): the text.
        pretokenized (bool): split on whitespace only (text already in the corpus's tokens);
            else ``tokenize_tweet``.

    Returns:
        list[str]: the tokens.
    """
    return line.split() if pretokenized else tokenize_tweet(line)
