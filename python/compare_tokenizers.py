"""Compares raw-tweet tokenizers on the tweet POS corpus's own tokenisation
(docs/guides/tagger.md, "Raw tweets").

The corpus holds tokens, not the raw tweets, so the raw text is rebuilt two ways:
- "spaced": the tokens joined by single spaces. A tokenizer in the corpus's conventions gives
  the tokens back; each split or merge is an error.
- "typed": as people type, sentence punctuation glued to the word before it
  (``gr8 !!`` -> ``gr8!!``, ``it .`` -> ``it.``). The tokenizer must split it off again.
For each, the share of tweets whose tokens come back exactly and the token F1 (a token is right
when its character span matches).

    python python/compare_tokenizers.py [--data-dir DIR] [--candidates ours,whitespace,nltk,twokenize]

nltk (TweetTokenizer) and twokenize (the PyPI port of ark-tweet-nlp's Twokenize) are measured
when importable; neither is a dependency of ebm_ext.
"""
from __future__ import annotations

import argparse
import re

from ebm_ext.tagging.data import corpus_file, data_dir, read_tweets
from ebm_ext.tagging.tokenize import tokenize_tweet

_GLUED = re.compile(r"^[.,!?;:…]+$")


def typed(tokens: list[str]) -> str:
    """The tokens as typed: sentence punctuation attached to a preceding word."""
    text = ""
    for i, token in enumerate(tokens):
        glue = i > 0 and _GLUED.match(token) and tokens[i - 1][-1:].isalnum()
        text += token if glue or i == 0 else " " + token
    return text


def spans(text: str, tokens: list[str]):
    """Character spans of tokens found in order in text (a token not found ends the match)."""
    out, position = set(), 0
    for token in tokens:
        start = text.find(token, position)
        if start < 0:
            break
        out.add((start, start + len(token)))
        position = start + len(token)
    return out


def candidates(names):
    table = {"ours": tokenize_tweet, "whitespace": str.split}
    if "nltk" in names:
        try:
            from nltk.tokenize import TweetTokenizer
            table["nltk"] = TweetTokenizer(preserve_case=True).tokenize
        except ImportError:
            print("nltk: not installed, skipped")
    if "twokenize" in names:
        try:
            from twokenize import twokenize
            # Its tokenizeRawTweetText calls HTMLParser().unescape, gone since Python 3.9: the
            # same normalisation with html.unescape, then its tokenizer.
            import html
            table["twokenize"] = lambda text: twokenize.tokenize(html.unescape(text))
        except ImportError:
            print("twokenize: not installed, skipped")
    return {n: table[n] for n in names if n in table}


def score(tokenizer, tweets, rebuild):
    exact = tp = n_gold = n_pred = 0
    for tokens in tweets:
        text = rebuild(tokens)
        predicted = tokenizer(text)
        exact += predicted == tokens
        gold_spans, pred_spans = spans(text, tokens), spans(text, predicted)
        tp += len(gold_spans & pred_spans)
        n_gold += len(tokens)
        n_pred += len(predicted)
    f1 = 2 * tp / max(1, n_gold + n_pred)
    return exact / len(tweets), f1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="the corpora's folder (default: $EBM_DATA, else ../shared/data)")
    p.add_argument("--candidates", default="ours,whitespace,nltk,twokenize")
    args = p.parse_args()
    root = data_dir(args.data_dir)
    tweets = [t for split in ("oct27.train", "oct27.dev", "oct27.test")
              for t, _ in read_tweets(corpus_file(root, f"twpos/{split}"))]
    print(f"{len(tweets)} tweets, {sum(map(len, tweets))} tokens")
    print("| tokenizer | spaced: tweets exact | spaced: token F1 | typed: tweets exact | typed: token F1 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, tokenizer in candidates(args.candidates.split(",")).items():
        a = score(tokenizer, tweets, " ".join)
        b = score(tokenizer, tweets, typed)
        print(f"| {name} | {100 * a[0]:.2f} | {100 * a[1]:.2f} | {100 * b[0]:.2f} | {100 * b[1]:.2f} |")


if __name__ == "__main__":
    main()
