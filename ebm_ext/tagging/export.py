"""A trained tagger as one exported program, and a loader that tags with it without the
training code (only torch and ebm_ext are imported).

``export_tagger(model, vocabs, path)`` writes two files:

- ``path`` (``tagger.pt2``): the whole pipeline from encoded tokens to tags, the ensemble's
  members included (packing, embeddings, character encoders, BiLSTMs, mean energies, Viterbi).
  With ``aoti=True`` (the default where a C++ compiler is found) it is AOTInductor's compiled
  package (``torch._inductor.aoti_compile_and_package``); otherwise torch.export's program
  (``torch.export.save``). Batch size, sentence length and word length are dynamic.
- ``path`` with the suffix ``.json`` beside it: the vocabularies (words, characters, affixes,
  tags), the encoding's word-length cap and which kind of program it is.

``ExportedTagger.load(path)`` reads both; ``tag(sentences)`` takes token lists and gives tag
lists. The custom ops the program calls (ebm_ext::packed_order, bilstm, viterbi) are registered
by importing ebm_ext, which is why the loader needs it.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Sequence

import torch
from torch import Tensor, nn

from .data import MAX_WORD_LEN, Batch, Vocabularies, encode

FORMAT = "ebm_ext.tagger/1"
_INPUTS = ("words", "chars", "suffixes", "prefixes", "shapes", "lengths")


class TaggingProgram(nn.Module):
    """The part of a tagger that is exported: encoded batch tensors -> tags (B, T), -1 past each
    length. ``model`` is an EnergyTagger or a TaggerEnsemble."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, words: Tensor, chars: Tensor, suffixes: Tensor, prefixes: Tensor,
                shapes: Tensor, lengths: Tensor) -> Tensor:
        return self.model.predict(Batch(words, chars, suffixes, prefixes, shapes, lengths, None))


def sidecar(path) -> pathlib.Path:
    """The vocabulary file beside an exported program: tagger.pt2 -> tagger.json."""
    return pathlib.Path(path).with_suffix(".json")


def batch_inputs(batch: Batch) -> tuple[Tensor, ...]:
    return tuple(getattr(batch, name) for name in _INPUTS)


def export_program(model: nn.Module, vocabs: Vocabularies) -> torch.export.ExportedProgram:
    """torch.export of ``TaggingProgram(model)`` with dynamic batch, sentence and word lengths."""
    program = TaggingProgram(model).eval()
    # An example with sizes of at least 2 everywhere, so that no size is specialised to 0 or 1.
    example = encode([(["hello", "world", "!!"], None), (["ok", "lol"], None)], vocabs,
                     MAX_WORD_LEN, with_tags=False)
    B, T, C = torch.export.Dim("batch"), torch.export.Dim("tokens"), torch.export.Dim("chars")
    per_token = {0: B, 1: T}
    dynamic = (per_token, {0: B, 1: T, 2: C}, per_token, per_token, per_token, {0: B})
    with torch.no_grad():
        return torch.export.export(program, batch_inputs(example), dynamic_shapes=dynamic,
                                   strict=False)


def aoti_available() -> bool:
    """AOTInductor compiles C++: it needs a compiler (``$CXX`` or c++/g++/clang++)."""
    compilers = (os.environ.get("CXX"), "c++", "g++", "clang++")
    return any(shutil.which(c) for c in compilers if c)


def export_tagger(model: nn.Module, vocabs: Vocabularies, path, aoti: bool = True) -> dict:
    """Writes a tagger as one exported program, with its vocabularies beside it (``sidecar``).

    Args:
        model (EnergyTagger or TaggerEnsemble): the tagger.
        vocabs (Vocabularies): its vocabularies.
        path (str or os.PathLike): the program's file, ending in ``.pt2``.
        aoti (bool): AOTInductor-compile the program; without a C++ compiler it falls back to
            torch.export's program and says so in the metadata.

    Returns:
        dict: the sidecar's metadata (the kind of program among it). Both files are written
        atomically.
    """
    path = pathlib.Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"export_tagger: the program's file must end in .pt2, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    exported = export_program(model, vocabs)
    kind = "aoti" if aoti and aoti_available() else "export"
    partial = path.with_name(path.stem + ".partial.pt2")  # AOTInductor wants the suffix
    if kind == "aoti":
        torch._inductor.aoti_compile_and_package(exported, package_path=str(partial))
    else:
        torch.export.save(exported, partial)
    meta = {"format": FORMAT, "program": kind, "max_word_len": MAX_WORD_LEN,
            "torch": torch.__version__, "vocabularies": vocabs.state()}
    side = sidecar(path)
    side_partial = side.with_name(side.name + ".partial")
    side_partial.write_text(json.dumps(meta), encoding="utf-8")
    # Each file appears whole: written under a temporary name, then renamed over the old one.
    os.replace(partial, path)
    os.replace(side_partial, side)
    return meta


class ExportedTagger:
    """A tagger loaded from ``export_tagger``'s files (use ``ExportedTagger.load``).

    ``tag(sentences)`` maps token lists to tag lists; ``predict(batch)`` an encoded Batch to
    tags (B, T), -1 past each length.

    Args:
        program (callable): the loaded program.
        vocabs (Vocabularies): its vocabularies.
        kind (str): ``'aoti'`` or ``'export'``.
        max_word_len (int): characters read per word.
    """

    def __init__(self, program, vocabs: Vocabularies, kind: str,
                 max_word_len: int = MAX_WORD_LEN):
        self.program, self.vocabs, self.kind = program, vocabs, kind
        self.max_word_len = max_word_len

    @classmethod
    def load(cls, path) -> "ExportedTagger":
        """Loads ``export_tagger``'s files.

        Security: an AOTInductor package holds compiled native code, which runs when it is
        loaded: load only packages from a trusted source.

        Args:
            path (str or os.PathLike): the ``.pt2`` file, with its ``.json`` beside it.

        Returns:
            ExportedTagger: the tagger.

        Raises:
            ValueError: a missing or unreadable file, named.
        """
        path = pathlib.Path(path)
        side = sidecar(path)
        for needed in (path, side):
            if not needed.is_file():
                raise ValueError(f"{needed}: no such file (an exported tagger is {path.name} "
                                 f"and {side.name} beside it, from tagger.py export)")
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{side}: not an exported tagger's vocabulary file ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ValueError(f"{side}: expected an exported tagger of format {FORMAT!r}, "
                             f"got {got!r}")
        vocabs = Vocabularies.from_state(meta["vocabularies"])
        if meta["program"] == "aoti":
            program = torch._inductor.aoti_load_package(str(path))
        else:
            program = torch.export.load(path).module()
        return cls(program, vocabs, meta["program"], meta.get("max_word_len", MAX_WORD_LEN))

    def predict(self, batch: Batch) -> Tensor:
        with torch.no_grad():
            return self.program(*batch_inputs(batch))

    def tag(self, sentences: Sequence[Sequence[str]], batch_size: int = 256) -> list[list[str]]:
        """The tags of each sentence.

        Args:
            sentences (sequence of list[str]): token lists; empty ones get no tags.
            batch_size (int): sentences per call of the program.

        Returns:
            list[list[str]]: one tag per token.
        """
        out: list[list[str]] = [[] for _ in sentences]
        todo = [i for i, s in enumerate(sentences) if len(s)]
        items = self.vocabs.tags.items
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            batch = encode([(list(sentences[i]), None) for i in chunk], self.vocabs,
                           self.max_word_len, with_tags=False)
            tags = self.predict(batch)
            for row, i in zip(tags.tolist(), chunk):
                out[i] = [items[t] for t in row[:len(sentences[i])]]
        return out
