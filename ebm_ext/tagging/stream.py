"""Tagging a stream of raw text, one tweet per line, in bounded memory: what ``tagger.py tag``
runs, for a checkpoint's tagger or an exported one alike."""
from __future__ import annotations

import itertools
from typing import BinaryIO, Callable, TextIO

import torch

from .data import Batch, Vocabularies, encode, read_lines
from .tokenize import tokenize

BATCH_LINES = 256


def tag_stream(predict: Callable[[Batch], torch.Tensor], vocabs: Vocabularies, lines: BinaryIO,
               out: TextIO, name: str = "<stdin>", pretokenized: bool = False, device="cpu",
               batch_lines: int = BATCH_LINES) -> int:
    """Tags each line of a stream and writes one block per line, batch by batch.

    A block is a ``token<TAB>tag`` line per token, then a blank line; an empty or
    whitespace-only line gets an empty block, so the n-th block is always the n-th line's.
    ``batch_lines`` lines at a time are read, tokenised, tagged, written and flushed, so memory
    stays that of one batch whatever the input's length.

    Args:
        predict (callable): an encoded Batch -> tags (B, T) (``EnergyTagger.predict``,
            ``ExportedTagger.predict``).
        vocabs (Vocabularies): the tagger's vocabularies.
        lines (binary file): the input, UTF-8.
        out (text file): where the blocks go.
        name (str): what errors call the input.
        pretokenized (bool): split on whitespace instead of ``tokenize_tweet``.
        device (str or torch.device): where the batches go.
        batch_lines (int): lines per batch.

    Returns:
        int: the number of lines tagged.

    Raises:
        ValueError: a line that is not UTF-8, as ``FILE:LINE``.
    """
    if batch_lines < 1:
        raise ValueError(f"tag_stream: batch_lines must be at least 1, got {batch_lines}")
    source = read_lines(lines, name)
    count = 0
    while True:
        chunk = [tokenize(line, pretokenized) for line in itertools.islice(source, batch_lines)]
        if not chunk:
            return count
        nonempty = [(tokens, None) for tokens in chunk if tokens]
        rows = iter([])
        if nonempty:
            with torch.no_grad():
                rows = iter(predict(encode(nonempty, vocabs, with_tags=False).to(device)).tolist())
        block = []
        for tokens in chunk:
            row = next(rows) if tokens else []
            block.extend(f"{token}\t{vocabs.tags.items[row[t]]}\n" for t, token in enumerate(tokens))
            block.append("\n")
        out.write("".join(block))
        out.flush()
        count += len(chunk)
