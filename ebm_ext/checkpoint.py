"""Outputs that are never half-written and checkpoints that never run code.

``atomic_write_bytes`` writes beside the target and renames over it, so a reader sees the old
file or the new one; ``save_checkpoint`` writes a dict of tensors and plain data that way, and
``load_checkpoint`` reads one with ``weights_only=True``, turning anything else (a truncated
file, random bytes, a pickle that wants to import or run code) into a ``CheckpointError`` that
names the file and says what was refused, without advice to load it unsafely.
"""
from __future__ import annotations

import os
import pathlib
import pickle
import re
import tempfile

import torch

__all__ = ["CheckpointError", "atomic_write_bytes", "load_checkpoint", "save_checkpoint"]


def atomic_write_bytes(path, write) -> None:
    """Calls ``write(file)`` on a temporary file beside ``path``, then renames it over ``path``.

    A reader sees the old file or the new one, never a partial one; on an error the temporary
    file is removed and the old file is left as it was.

    Args:
        path (str or os.PathLike): the file to write; its folder is created.
        write (callable): called with the temporary file, opened for binary writing.

    Returns:
        None.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(state: dict, path) -> None:
    """Writes ``state`` (tensors, numbers, strings, lists and dicts) to ``path`` atomically.

    Args:
        state (dict): what to save; it must load back with ``weights_only=True``.
        path (str or os.PathLike): the file; its folder is created.

    Returns:
        None.
    """
    atomic_write_bytes(path, lambda f: torch.save(state, f))


class CheckpointError(ValueError):
    """A file that is not a checkpoint of the expected kind; the message names the file.

    A ``ValueError``, so programs that turn bad input into one line and exit status 2 catch it.

    Args:
        message (str): the file and what is wrong with it.
    """


def load_checkpoint(path) -> dict:
    """Loads a checkpoint with ``weights_only=True``: no code in the file runs.

    Args:
        path (str or os.PathLike): the file.

    Returns:
        dict: the checkpoint, its tensors on the CPU.

    Raises:
        CheckpointError: a missing, truncated, empty or foreign file, or one holding pickled
            objects (the message names what was refused), always naming the file.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load reports damage as many types (EOFError, RuntimeError, ...)
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # no terminal escape codes
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in text:
            # torch's message goes on to explain how to load the file unsafely: say only what
            # was refused and why.
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            if found:
                raise CheckpointError(
                    f"{path}: refused: it names {found.group(1)}, which a weights-only load "
                    f"does not import or run (our checkpoints hold tensors and plain data "
                    f"only); not a checkpoint written by ebm_ext") from None
            reason = re.search(r"WeightsUnpickler error:\s*(.+)", text)
            text = reason.group(1) if reason else "not a weights-only pickle"
        first = text.splitlines()[0] if text else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: "
                              f"{first[:200]})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: a checkpoint holds a dict, got {type(state).__name__}")
    return state
