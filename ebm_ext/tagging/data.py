"""Readers and vocabularies for sequence labelling.

- ``read_tweets``: the ARK tweet POS format (``token<TAB>tag`` per line, a blank line after each
  tweet).
- ``read_conllu``: CoNLL-U through the ``conllu`` package (UPOS by default); multiword-token
  lines and empty nodes carry no UPOS tag and are skipped.
- ``read_tagset``: the tweet tagset with its categories.
- ``read_lines``: raw text one line at a time (what ``tagger.py tag`` streams).

Malformed input raises ``ValueError`` naming the file and line.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
from typing import BinaryIO, Iterable, Iterator, Optional, Sequence

import torch

Sentence = tuple  # (tokens: list[str], tags: list[str])

PAD, UNK = "<pad>", "<unk>"
# Where the corpora are found when neither an argument nor $EBM_DATA says: ../shared/data beside
# the checkout this package lives in (this project's layout; an installed package has none).
DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"
DATA_SOURCES = ("the tweet POS corpus (twpos: oct27.train/dev/test and tagset.tsv, Gimpel et al. "
                "2011, Owoputi et al. 2013, from ark-tweet-nlp's repository) and UD English EWT "
                "(ud_ewt/en_ewt-ud-*.conllu, from Universal Dependencies)")


def data_dir(path=None) -> pathlib.Path:
    """The folder that holds the corpora: one rule for every program, test and bench.

    Args:
        path (str or os.PathLike, optional): an explicit folder (a program's ``--data-dir``).

    Returns:
        pathlib.Path: ``path`` if given, else ``$EBM_DATA`` if set, else ``../shared/data``
        beside the checkout (``DEFAULT_DATA``). Whether it exists is checked where a file is
        read (``corpus_file``).

    Example:
        >>> from ebm_ext.tagging.data import data_dir
        >>> str(data_dir("/corpora"))
        '/corpora'
    """
    return pathlib.Path(path or os.environ.get("EBM_DATA") or DEFAULT_DATA)


def corpus_file(root, relative: str) -> pathlib.Path:
    """The path of a corpus file under ``root``, which must exist.

    Args:
        root (str or os.PathLike): the data folder (``data_dir()``).
        relative (str): the file within it, such as ``twpos/oct27.train``.

    Returns:
        pathlib.Path: ``root / relative``.

    Raises:
        ValueError: the file is missing; the message says where the data are looked for
            (``--data-dir``, ``$EBM_DATA``, ``../shared/data``) and what they are.
    """
    path = pathlib.Path(root) / relative
    if not path.is_file():
        raise ValueError(f"{path}: no such corpus file. The corpora are read from --data-dir, "
                         f"else $EBM_DATA, else ../shared/data beside the repository "
                         f"({DEFAULT_DATA}); they are {DATA_SOURCES}.")
    return path


MAX_WORD_LEN = 20  # a word's characters past this many are not read


def read_text(path) -> str:
    """A data file's text; ValueError naming the file and line when it is not UTF-8 (a binary
    file, another encoding)."""
    path = pathlib.Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_lines(stream: BinaryIO, name: str) -> Iterator[str]:
    """The lines of a binary stream as text, one at a time and without their line ending
    (\\n or \\r\\n) or a byte-order mark; ValueError naming `name` and the line when one is
    not UTF-8."""
    for number, raw in enumerate(stream, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{name}:{number}: not UTF-8 text ({e.reason} at byte {e.start} "
                             f"of the line)") from None
        yield (line[1:] if number == 1 and line.startswith("\ufeff") else line).rstrip("\r\n")


def read_tweets(path) -> list[Sentence]:
    """The tweets of a ``token<TAB>tag`` file, each ended by a blank line (the last may not be).

    Args:
        path (str or os.PathLike): the file (UTF-8).

    Returns:
        list[tuple[list[str], list[str]]]: (tokens, tags) per tweet.

    Raises:
        ValueError: a line that is not ``token<TAB>tag`` or not UTF-8, named by file and line.
    """
    path = pathlib.Path(path)
    sentences, tokens, tags = [], [], []
    # Split on "\n" only: str.splitlines would also break tokens at U+2028, U+0085 and the like.
    for number, line in enumerate(read_text(path).split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0] or not fields[1].strip():
            raise ValueError(f"{path}:{number}: expected 'token<TAB>tag', got {line[:80]!r}")
        tokens.append(fields[0])
        tags.append(fields[1].strip())
    if tokens:
        sentences.append((tokens, tags))
    return sentences


def read_conllu(path, column: str = "upos") -> list[Sentence]:
    """The sentences of a CoNLL-U file, parsed by ``conllu``; multiword tokens and empty nodes are skipped.

    Args:
        path (str or os.PathLike): the file.
        column (str): the tag column, ``'upos'`` or ``'xpos'``.

    Returns:
        list[tuple[list[str], list[str]]]: (forms, tags) per sentence.

    Raises:
        ValueError: a malformed file or a missing tag, named by file and line.
    """
    import conllu
    import conllu.exceptions

    path = pathlib.Path(path)
    text = read_text(path)
    sentences = []
    lines = text.split("\n")
    start = 0
    while start < len(lines):
        while start < len(lines) and not lines[start].strip():
            start += 1
        end = start
        while end < len(lines) and lines[end].strip():
            end += 1
        if end > start:
            sentences.extend(_parse_block(conllu, path, lines, start, end, column))
        start = end
    return sentences


def _parse_block(conllu, path, lines, start, end, column):
    words = [(n, line) for n, line in enumerate(lines[start:end], start + 1)
             if not line.startswith("#")]
    for number, line in words:
        if line.count("\t") != 9:
            raise ValueError(f"{path}:{number}: a CoNLL-U word line has 10 tab-separated columns, "
                             f"got {line.count(chr(9)) + 1}: {line!r}")
    try:
        parsed = conllu.parse("\n".join(lines[start:end]) + "\n\n")
    except Exception as error:  # conllu's ParseException does not know the file's line numbers
        raise ValueError(f"{path}:{start + 1}: the sentence starting here is not valid CoNLL-U: "
                         f"{error}") from error
    out = []
    for sentence in parsed:
        forms, tags = [], []
        word_lines = iter(words)
        for token in sentence:
            number, _ = next(word_lines)
            if not isinstance(token["id"], int):
                continue  # multiword range (3-4) or empty node (8.1): no UPOS
            tag = token[column]
            if tag in (None, "_"):
                raise ValueError(f"{path}:{number}: word {token['id']} has no {column} tag")
            forms.append(token["form"])
            tags.append(tag)
        out.append((forms, tags))
    return out


def read_sentences(path, format: str = "auto") -> list[Sentence]:
    """Sentences of a file in either format.

    Args:
        path (str or os.PathLike): the file.
        format (str): ``'tweets'``, ``'conllu'``, or ``'auto'`` (``.conllu`` is CoNLL-U,
            anything else ``token<TAB>tag``).

    Returns:
        list[tuple[list[str], list[str]]]: (tokens, tags) per sentence.

    Raises:
        ValueError: as the readers.
    """
    if format == "auto":
        format = "conllu" if str(path).endswith(".conllu") else "tweets"
    if format == "conllu":
        return read_conllu(path)
    if format == "tweets":
        return read_tweets(path)
    raise ValueError(f"format must be 'auto', 'tweets' or 'conllu', got {format!r}")


def read_tagset(path) -> tuple[list[str], list[str]]:
    """The tags and their categories from the tweet tagset's TSV (header: tag, category, description).

    Args:
        path (str or os.PathLike): ``twpos/tagset.tsv``.

    Returns:
        tuple[list[str], list[str]]: the tags and each one's category name.
    """
    path = pathlib.Path(path)
    rows = path.read_text(encoding="utf-8").splitlines()
    tags, categories = [], []
    for number, row in enumerate(rows[1:], 2):
        fields = row.split("\t")
        if len(fields) < 2:
            raise ValueError(f"{path}:{number}: expected 'tag<TAB>category<TAB>description'")
        tags.append(fields[0])
        categories.append(fields[1])
    return tags, categories


UPOS = ["ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON",
        "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X"]


class Vocab:
    """A string <-> index map with a padding entry (0) and an unknown entry (1)."""

    def __init__(self, items: Iterable[str], specials: Sequence[str] = (PAD, UNK)):
        self.items = list(specials) + [x for x in items if x not in specials]
        self.index = {x: i for i, x in enumerate(self.items)}
        self.unk = self.index.get(UNK)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item: str) -> int:
        i = self.index.get(item, self.unk)
        if i is None:
            raise KeyError(f"{item!r} is not in the vocabulary (which has no unknown entry)")
        return i

    def state(self) -> list[str]:
        return list(self.items)

    @classmethod
    def from_state(cls, items: list[str]) -> "Vocab":
        v = cls.__new__(cls)
        v.items = list(items)
        v.index = {x: i for i, x in enumerate(v.items)}
        v.unk = v.index.get(UNK)
        return v


def word_key(token: str) -> str:
    """Words are looked up lowercased, with digits folded to 0 (the characters keep the rest)."""
    return "".join("0" if c.isdigit() else c for c in token.lower())


def suffix_key(token: str, n: int = 3) -> str:
    return word_key(token)[-n:]


def prefix_key(token: str, n: int = 3) -> str:
    return word_key(token)[:n]


SHAPES = ["other", "url", "mention", "hashtag", "number", "punct", "upper", "title", "lower",
          "mixed", "emoticon"]
_EMOTICON = set(":;=")


def shape(token: str) -> int:
    """A coarse orthographic class of the token (index into SHAPES): the distinctions that the
    tweet tags (U, @, #, $, ',', E, ^) follow and that a small corpus teaches slowly."""
    low = token.lower()
    if low.startswith(("http:", "https:", "www.")) or ".com" in low:
        return SHAPES.index("url")
    if token.startswith("@") and len(token) > 1:
        return SHAPES.index("mention")
    if token.startswith("#") and len(token) > 1:
        return SHAPES.index("hashtag")
    if any(c.isdigit() for c in token) and all(c.isdigit() or c in ".,:/-%$" for c in token):
        return SHAPES.index("number")
    if (2 <= len(token) <= 4 and token[0] in _EMOTICON) or token in ("<3", "</3"):
        return SHAPES.index("emoticon")
    if not any(c.isalnum() for c in token):
        return SHAPES.index("punct")
    if token.isupper():
        return SHAPES.index("upper")
    if token[:1].isupper() and token[1:].islower():
        return SHAPES.index("title")
    if token.islower():
        return SHAPES.index("lower")
    return SHAPES.index("mixed")


@dataclasses.dataclass
class Vocabularies:
    """What a tagger reads its input through: words, characters, affixes and tags as indices.

    ``build(sentences, tags)`` makes them from training sentences; ``state()`` and
    ``from_state`` store them in checkpoints as plain data.

    Attributes:
        words, chars, suffixes, prefixes (Vocab): with padding (0) and unknown (1) entries.
        tags (Vocab): no special entries: index = tag id.
        word_counts (list[int]): training count per word index.
        tag_counts (list): training count of each tag per word index.
    """
    words: Vocab
    chars: Vocab
    suffixes: Vocab
    prefixes: Vocab
    tags: Vocab  # no specials: index = tag id
    word_counts: list = dataclasses.field(default_factory=list)  # training count per word index
    # training count of each tag per word index ([] in vocabularies of older checkpoints)
    tag_counts: list = dataclasses.field(default_factory=list)

    @classmethod
    def build(cls, sentences: Sequence[Sentence], tags: Sequence[str],
              min_count: int = 1) -> "Vocabularies":
        tokens = [t for words, _ in sentences for t in words]
        counts = collections.Counter(word_key(t) for t in tokens)
        words = Vocab(sorted(w for w, c in counts.items() if c >= min_count))
        chars = Vocab(sorted({c for t in tokens for c in t}))
        suffixes = Vocab(sorted({suffix_key(t) for t in tokens}))
        prefixes = Vocab(sorted({prefix_key(t) for t in tokens}))
        tag_vocab = Vocab(tags, specials=())
        per_word = {w: [0] * len(tag_vocab) for w in words.items}
        for sentence_tokens, labels in sentences:
            for token, label in zip(sentence_tokens, labels or ()):
                if label in tag_vocab.index:
                    per_word[word_key(token)][tag_vocab.index[label]] += 1
        return cls(words, chars, suffixes, prefixes, tag_vocab,
                   [counts.get(w, 0) for w in words.items], [per_word[w] for w in words.items])

    def state(self) -> dict:
        return {"words": self.words.state(), "chars": self.chars.state(),
                "suffixes": self.suffixes.state(), "prefixes": self.prefixes.state(),
                "tags": self.tags.state(), "word_counts": list(self.word_counts),
                "tag_counts": [list(c) for c in self.tag_counts]}

    @classmethod
    def from_state(cls, state: dict) -> "Vocabularies":
        return cls(Vocab.from_state(state["words"]), Vocab.from_state(state["chars"]),
                   Vocab.from_state(state["suffixes"]), Vocab.from_state(state["prefixes"]),
                   Vocab.from_state(state["tags"]), list(state.get("word_counts", [])),
                   [list(c) for c in state.get("tag_counts", [])])


@dataclasses.dataclass
class Batch:
    """A padded batch of encoded sentences (``collate``, ``encode``); ``to(device)`` moves it.

    Attributes:
        words, suffixes, prefixes, shapes (Tensor[B, T], int64): indices, 0 past each length.
        chars (Tensor[B, T, C], int64): character indices, 0 = padding.
        lengths (Tensor[B], int64): the sentence lengths.
        tags (Tensor[B, T], int64, optional): gold tags, -1 past each length.
    """
    words: torch.Tensor     # (B, T) int64
    chars: torch.Tensor     # (B, T, C) int64
    suffixes: torch.Tensor  # (B, T) int64
    prefixes: torch.Tensor  # (B, T) int64
    shapes: torch.Tensor    # (B, T) int64, index into SHAPES
    lengths: torch.Tensor   # (B,) int64
    tags: Optional[torch.Tensor]  # (B, T) int64, -1 past each length

    def to(self, device) -> "Batch":
        move = lambda x: None if x is None else x.to(device)  # noqa: E731
        return Batch(*(move(getattr(self, f.name)) for f in dataclasses.fields(self)))


@dataclasses.dataclass
class Encoded:
    """One sentence as index tensors, to be padded into a Batch by ``collate``: encode the
    corpus once, collate every epoch."""
    words: torch.Tensor     # (L,) int64
    chars: torch.Tensor     # (L, C) int64, C = the longest word's characters (capped)
    suffixes: torch.Tensor  # (L,)
    prefixes: torch.Tensor  # (L,)
    shapes: torch.Tensor    # (L,)
    tags: Optional[torch.Tensor]  # (L,) or None


def _token_ids(tokens: Sequence[str], vocabs: Vocabularies, max_word_len: int) -> tuple:
    """(words, chars, suffixes, prefixes, shapes) of one sentence as lists of ids, chars as rows
    padded with 0 to the longest word's characters (capped at max_word_len, at least 1)."""
    keys = [word_key(t) for t in tokens]
    C = max((min(len(t), max_word_len) for t in tokens), default=1)
    char = vocabs.chars.index.get
    unk = vocabs.chars.unk
    chars = []
    for t in tokens:
        row = [char(ch, unk) for ch in t[:max_word_len]]
        chars.append(row + [0] * (C - len(row)))
    return ([vocabs.words[k] for k in keys], chars, [vocabs.suffixes[k[-3:]] for k in keys],
            [vocabs.prefixes[k[:3]] for k in keys], [shape(t) for t in tokens])


def _tag_ids(labels: Sequence[str], vocabs: Vocabularies) -> list[int]:
    for tag in labels:
        if tag not in vocabs.tags.index:
            raise ValueError(f"unknown tag {tag!r} (known: {' '.join(vocabs.tags.items)})")
    return [vocabs.tags.index[tag] for tag in labels]


def encode_sentence(sentence: Sentence, vocabs: Vocabularies, max_word_len: int = MAX_WORD_LEN,
                    with_tags: bool = True) -> Encoded:
    """Index tensors of one (tokens, tags) sentence, to be padded by ``collate``.

    Args:
        sentence (tuple[list[str], list[str]]): tokens and tags.
        vocabs (Vocabularies): the vocabularies.
        max_word_len (int): characters read per word.
        with_tags (bool): encode the tags too.

    Returns:
        Encoded: the sentence's index tensors.

    Raises:
        ValueError: a tag the vocabularies do not know.
    """
    tokens, labels = sentence
    words, chars, suffixes, prefixes, shapes = _token_ids(tokens, vocabs, max_word_len)
    as_tensor = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    C = len(chars[0]) if chars else 1
    return Encoded(as_tensor(words), as_tensor(chars).view(len(tokens), C), as_tensor(suffixes),
                   as_tensor(prefixes), as_tensor(shapes),
                   as_tensor(_tag_ids(labels, vocabs)) if with_tags else None)


def collate(items: Sequence[Encoded]) -> Batch:
    """Pads encoded sentences into a Batch (tags -1 past each length).

    Args:
        items (sequence of Encoded): the sentences.

    Returns:
        Batch: the padded batch; its tags are None if any item has none.
    """
    B = len(items)
    lengths = torch.tensor([len(e.words) for e in items], dtype=torch.long)
    T = int(lengths.max()) if B else 0
    C = max((e.chars.shape[1] for e in items), default=1)
    words, suffixes, prefixes, shapes = (torch.zeros(B, T, dtype=torch.long) for _ in range(4))
    chars = torch.zeros(B, T, C, dtype=torch.long)
    with_tags = all(e.tags is not None for e in items)
    tags = torch.full((B, T), -1, dtype=torch.long) if with_tags else None
    for b, e in enumerate(items):
        L = len(e.words)
        words[b, :L], suffixes[b, :L], prefixes[b, :L], shapes[b, :L] = (
            e.words, e.suffixes, e.prefixes, e.shapes)
        chars[b, :L, :e.chars.shape[1]] = e.chars
        if with_tags:
            tags[b, :L] = e.tags
    return Batch(words, chars, suffixes, prefixes, shapes, lengths, tags)


def encode(sentences: Sequence[Sentence], vocabs: Vocabularies, max_word_len: int = MAX_WORD_LEN,
           with_tags: bool = True) -> Batch:
    """Pads a list of sentences into a Batch, as ``collate`` of ``encode_sentence`` but faster.

    One tensor is built per field rather than per sentence: what tagging raw text spends its
    time on.

    Args:
        sentences (sequence of tuple[list[str], list[str]]): tokens and tags.
        vocabs (Vocabularies): the vocabularies.
        max_word_len (int): characters read per word.
        with_tags (bool): encode the tags too.

    Returns:
        Batch: the padded batch.

    Raises:
        ValueError: a tag the vocabularies do not know.
    """
    ids = [_token_ids(tokens, vocabs, max_word_len) for tokens, _ in sentences]
    B = len(ids)
    lengths = [len(x[0]) for x in ids]
    T = max(lengths, default=0)
    C = max((len(x[1][0]) for x in ids if x[1]), default=1)
    pad = lambda row, fill=0: row + [fill] * (T - len(row))  # noqa: E731
    field = lambda k: torch.tensor([pad(x[k]) for x in ids], dtype=torch.long).view(B, T)  # noqa: E731
    chars = torch.tensor([[row + [0] * (C - len(row)) for row in x[1]] + [[0] * C] * (T - len(x[1]))
                          for x in ids], dtype=torch.long).view(B, T, C)
    tags = None
    if with_tags:
        tags = torch.tensor([pad(_tag_ids(labels, vocabs), -1) for _, labels in sentences],
                            dtype=torch.long).view(B, T)
    return Batch(field(0), chars, field(2), field(3), field(4),
                 torch.tensor(lengths, dtype=torch.long), tags)
