"""What the scikit-learn-style estimators (ebm_ext.cluster, ebm_ext.sparse) share: the check of
their data and their progress bars."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor


def rows(y, where: str, layout: str) -> Tensor:
    """y as a tensor of floating-point rows (N, ...); ValueError naming `where` otherwise."""
    y = torch.as_tensor(y)
    if y.dim() != 2 or not y.is_floating_point():
        raise ValueError(f"{where}: y must be a floating-point {layout} tensor, got shape "
                         f"{list(y.shape)} ({y.dtype})")
    return y


def progress(iterable: Iterable, enabled: bool, **kwargs):
    """A tqdm bar over `iterable` when enabled (as python/loop.py's), else the iterable."""
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, dynamic_ncols=True, leave=False, **kwargs)
