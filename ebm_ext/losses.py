"""Training criteria for energy-based taggers, on the chain-energy ops.

Each takes the chain energy (``unary`` (B, T, K), ``trans`` (K, K), optional ``start``/``end``),
``gold`` tags (B, T) int64 (positions t >= L are ignored and may hold -1) and ``lengths``, and
returns per-sequence losses reduced like torch's losses: ``reduction='none' | 'mean' | 'sum'``
(mean over the batch). Energies are lower-is-better. ``CRITERIA`` names them for models that
take a criterion by name (the registry at the end: a loss, whether it reads the transitions,
which cost it needs).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from .ops import (chain_energy, chain_log_partition, loss_augmented_viterbi, viterbi,
                  viterbi_kbest)

_REDUCTIONS = ("none", "mean", "sum")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_gold(op: str, unary: Tensor, gold: Tensor, lengths: Optional[Tensor]) -> None:
    """What every loss on gold tags checks, under its own name: gold int64 tags (B, T) matching
    unary (B, T, K) (a float gold is a mistake here: the chain ops would read it as relaxed
    tags, so it is named as such), lengths (B,) in [0, T], and gold in [0, K) at t < L."""
    if not isinstance(unary, Tensor):
        raise ValueError(f"{op}: unary must be a tensor (B, T, K), got {type(unary).__name__}")
    if not unary.is_floating_point():
        raise ValueError(f"{op}: unary must be a floating-point tensor of energies (B, T, K), "
                         f"got {unary.dtype}")
    if not isinstance(gold, Tensor) or gold.dtype != torch.long:
        got = gold.dtype if isinstance(gold, Tensor) else type(gold).__name__
        raise ValueError(f"{op}: gold must be an int64 tensor of tags (B, T), got {got}")
    if unary.dim() != 3 or tuple(gold.shape) != tuple(unary.shape[:2]):
        raise ValueError(f"{op}: unary must be (B, T, K) and gold (B, T), got "
                         f"{tuple(unary.shape)} and {tuple(gold.shape)}")
    B, T, K = unary.shape
    _check_lengths(op, lengths, B, T)
    bad = _valid(gold, lengths) & ((gold < 0) | (gold >= K))
    if bool(bad.any()):
        b, t = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{op}: gold must hold tags in [0, K={K}) at positions t < length, "
                         f"got {int(gold[b, t])} at index [{b}, {t}]")


def _check_lengths(op: str, lengths: Optional[Tensor], B: int, T: int) -> None:
    if lengths is None:
        return
    if not isinstance(lengths, Tensor) or lengths.dtype != torch.long or tuple(lengths.shape) != (B,):
        got = (f"{lengths.dtype} of shape {tuple(lengths.shape)}" if isinstance(lengths, Tensor)
               else type(lengths).__name__)
        raise ValueError(f"{op}: lengths must be an int64 tensor of shape (B,) = ({B},), got {got}")
    if B and (int(lengths.min()) < 0 or int(lengths.max()) > T):
        raise ValueError(f"{op}: lengths must be in [0, T={T}], got values in "
                         f"[{int(lengths.min())}, {int(lengths.max())}]")


def check_allowed(op: str, unary: Tensor, allowed: Tensor) -> None:
    """Check a partial label set: a boolean tensor of unary's shape.

    Args:
        op (str): the name of the calling function, for the message.
        unary (Tensor[B, T, K], float): the energies the set belongs to.
        allowed (Tensor[B, T, K], bool): the tags allowed at each position.

    Returns:
        None.

    Raises:
        ValueError: ``allowed`` is not boolean or not of unary's shape.
    """
    if not isinstance(unary, Tensor) or not isinstance(allowed, Tensor):
        raise ValueError(f"{op}: unary and the allowed tags must be tensors")
    if allowed.dtype != torch.bool or tuple(allowed.shape) != tuple(unary.shape):
        raise ValueError(f"{op}: allowed tags must be a bool tensor of the shape of unary (B, T, K) "
                         f"= {tuple(unary.shape)}, got {allowed.dtype} of shape {tuple(allowed.shape)}")


def restrict(unary: Tensor, allowed: Tensor) -> Tensor:
    """The unary energies with the tags outside ``allowed`` forbidden (+inf).

    The energy of the restricted chain, for partial labels and restricted decoding:
    ``viterbi(restrict(unary, allowed), trans)`` decodes among the allowed tags only.

    Args:
        unary (Tensor[B, T, K], float): the unary energies.
        allowed (Tensor[B, T, K], bool): the tags allowed at each position.

    Returns:
        Tensor[B, T, K]: a new tensor; differentiable in unary (0 where forbidden).

    Raises:
        ValueError: as ``check_allowed``.

    Example:
        >>> from ebm_ext import losses
        >>> losses.restrict(torch.zeros(1, 2, 2), torch.tensor([[[True, False], [True, True]]]))
        tensor([[[0., inf],
                 [0., 0.]]])
    """
    return unary.masked_fill(~allowed, float("inf"))


def _valid(gold: Tensor, lengths: Optional[Tensor]) -> Tensor:
    B, T = gold.shape
    if lengths is None:
        return torch.ones_like(gold, dtype=torch.bool)
    return torch.arange(T, device=gold.device) < lengths[:, None]


def token_nll(unary: Tensor, gold: Tensor, lengths: Optional[Tensor] = None,
              reduction: str = "mean") -> Tensor:
    """The feed-forward tagger's loss: -sum_(t<L) log softmax(-unary[b, t])[gold_t].

    Each position is classified independently (no transitions).

    Args:
        unary (Tensor[B, T, K], float): the unary energies.
        gold (Tensor[B, T], int64): the gold tags (positions t >= L are ignored).
        lengths (Tensor[B], int64, optional): the lengths; None: all T.
        reduction (str): ``'mean'`` (over the batch), ``'sum'`` or ``'none'``.

    Returns:
        Tensor: the loss per sequence (B,) with ``reduction='none'``, else a scalar.
        Differentiable in every float input.

    Raises:
        ValueError: a bad reduction, or gold tags, lengths or energies of the wrong shape or
            dtype, named in the message.

    Example:
        >>> from ebm_ext import losses
        >>> losses.token_nll(torch.zeros(1, 3, 2), torch.tensor([[0, 1, 1]]))   # 3 log 2
        tensor(2.0794)
    """
    _check_gold("token_nll", unary, gold, lengths)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"token_nll: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    valid = _valid(gold, lengths)
    logp = torch.log_softmax(-unary, dim=-1)
    picked = logp.gather(-1, torch.where(valid, gold, 0)[..., None]).squeeze(-1)
    return _reduce(-(picked * valid).sum(-1), reduction)


def crf_nll(unary: Tensor, trans: Tensor, gold: Tensor, lengths: Optional[Tensor] = None,
            start: Optional[Tensor] = None, end: Optional[Tensor] = None,
            reduction: str = "mean") -> Tensor:
    """The CRF negative log-likelihood -log p(gold) = E(gold) + log Z.

    p(y) is proportional to exp(-E(x, y)). Partial or fuzzy labels: ``gold`` may instead be a
    boolean (B, T, K) set of the tags allowed at each position; the loss is then log Z - log
    Z(restricted to gold), the marginal likelihood of every sequence consistent with it (+inf
    when none is).

    Args:
        unary (Tensor[B, T, K], float): the unary energies.
        trans (Tensor[K, K], float): the transition energies, ``trans[i, j]`` for i -> j.
        gold (Tensor[B, T] int64, or Tensor[B, T, K] bool): the gold tags or allowed sets.
        lengths (Tensor[B], int64, optional): the lengths; None: all T.
        start, end (Tensor[K], float, optional): the first and last tags' energies; None: 0.
        reduction (str): ``'mean'`` (over the batch), ``'sum'`` or ``'none'``.

    Returns:
        Tensor: the loss per sequence (B,) with ``reduction='none'``, else a scalar.
        Differentiable in every float input.

    Raises:
        ValueError: a bad reduction, or gold tags, lengths or energies of the wrong shape or
            dtype, named in the message.

    Example:
        >>> from ebm_ext import losses
        >>> unary = torch.tensor([[[0., 1.], [1., 0.], [0., 2.]]])
        >>> trans = torch.tensor([[0., 3.], [3., 0.]])
        >>> gold = torch.tensor([[0, 1, 1]])
        >>> losses.crf_nll(unary, trans, gold)
        tensor(4.2114)
    """
    if isinstance(gold, Tensor) and gold.dtype == torch.bool:
        check_allowed("crf_nll", unary, gold)
        _check_lengths("crf_nll", lengths, gold.shape[0], gold.shape[1])
        restricted = restrict(unary, gold)
        loss = (chain_log_partition(unary, trans, lengths, start, end)
                - chain_log_partition(restricted, trans, lengths, start, end))
        return _reduce(loss, reduction)
    _check_gold("crf_nll", unary, gold, lengths)
    loss = (chain_energy(unary, trans, gold, lengths, start, end)
            + chain_log_partition(unary, trans, lengths, start, end))
    return _reduce(loss, reduction)


def perceptron(unary: Tensor, trans: Tensor, gold: Tensor, lengths: Optional[Tensor] = None,
               start: Optional[Tensor] = None, end: Optional[Tensor] = None,
               reduction: str = "mean") -> Tensor:
    """The structured perceptron's loss E(gold) - min_y E(y).

    Zero when gold is a minimiser; its gradient pushes E(gold) down and E(y*) up.

    Args:
        unary (Tensor[B, T, K], float): the unary energies.
        trans (Tensor[K, K], float): the transition energies, ``trans[i, j]`` for i -> j.
        gold (Tensor[B, T], int64): the gold tags (positions t >= L are ignored).
        lengths (Tensor[B], int64, optional): the lengths; None: all T.
        start, end (Tensor[K], float, optional): the first and last tags' energies; None: 0.
        reduction (str): ``'mean'`` (over the batch), ``'sum'`` or ``'none'``.

    Returns:
        Tensor: the loss per sequence (B,) with ``reduction='none'``, else a scalar.
        Differentiable in every float input.

    Raises:
        ValueError: a bad reduction, or gold tags, lengths or energies of the wrong shape or
            dtype, named in the message.

    Example:
        >>> from ebm_ext import losses
        >>> unary = torch.tensor([[[0., 1.], [1., 0.], [0., 2.]]])
        >>> trans = torch.tensor([[0., 3.], [3., 0.]])
        >>> gold = torch.tensor([[0, 1, 1]])
        >>> losses.perceptron(unary, trans, gold)         # E(gold) = 5, min E = 1
        tensor(4.)
    """
    _check_gold("perceptron", unary, gold, lengths)
    best, _ = viterbi(unary, trans, lengths, start, end)
    return _reduce(chain_energy(unary, trans, gold, lengths, start, end) - best, reduction)


def margin_hinge(unary: Tensor, trans: Tensor, gold: Tensor, margin: float = 1.0,
                 lengths: Optional[Tensor] = None, start: Optional[Tensor] = None,
                 end: Optional[Tensor] = None, reduction: str = "mean") -> Tensor:
    """The margin hinge [m + E(gold) - min_(y != gold) E(y)]_+, exact.

    The competitor is the best path that is not gold, found by 2-best decoding. A sequence with
    no other path (length 0, or K = 1) has loss 0.

    Args:
        unary (Tensor[B, T, K], float): the unary energies.
        trans (Tensor[K, K], float): the transition energies, ``trans[i, j]`` for i -> j.
        gold (Tensor[B, T], int64): the gold tags (positions t >= L are ignored).
        margin (float): m.
        lengths (Tensor[B], int64, optional): the lengths; None: all T.
        start, end (Tensor[K], float, optional): the first and last tags' energies; None: 0.
        reduction (str): ``'mean'`` (over the batch), ``'sum'`` or ``'none'``.

    Returns:
        Tensor: the loss per sequence (B,) with ``reduction='none'``, else a scalar.
        Differentiable in every float input.

    Raises:
        ValueError: a bad reduction, or gold tags, lengths or energies of the wrong shape or
            dtype, named in the message.

    Example:
        >>> from ebm_ext import losses
        >>> unary = torch.tensor([[[0., 1.], [1., 0.], [0., 2.]]])
        >>> trans = torch.tensor([[0., 3.], [3., 0.]])
        >>> gold = torch.tensor([[0, 1, 1]])
        >>> losses.margin_hinge(unary, trans, gold, margin=1.0)    # 1 + 5 - 1
        tensor(5.)
    """
    _check_gold("margin_hinge", unary, gold, lengths)
    e_gold = chain_energy(unary, trans, gold, lengths, start, end)
    energy, tags = viterbi_kbest(unary, trans, 2, lengths, start, end)
    valid = _valid(gold, lengths)
    best_is_gold = ((tags[:, 0] == gold) | ~valid).all(-1)
    competitor = torch.where(best_is_gold, energy[:, 1], energy[:, 0])
    return _reduce(torch.relu(margin + e_gold - competitor), reduction)


def margin_rescaled_hinge(unary: Tensor, trans: Tensor, gold: Tensor, cost: Tensor,
                          lengths: Optional[Tensor] = None, start: Optional[Tensor] = None,
                          end: Optional[Tensor] = None, reduction: str = "mean") -> Tensor:
    """The margin-rescaled hinge [max_y (Delta(y, gold) - E(y)) + E(gold)]_+.

    Delta(y, gold) = sum_t cost[gold_t, y_t], through cost-augmented decoding
    (``loss_augmented_viterbi``).

    Args:
        unary (Tensor[B, T, K], float): the unary energies.
        trans (Tensor[K, K], float): the transition energies, ``trans[i, j]`` for i -> j.
        gold (Tensor[B, T], int64): the gold tags (positions t >= L are ignored).
        cost (Tensor[K, K], float): non-negative, zero diagonal (``hamming_cost``,
            ``category_cost``).
        lengths (Tensor[B], int64, optional): the lengths; None: all T.
        start, end (Tensor[K], float, optional): the first and last tags' energies; None: 0.
        reduction (str): ``'mean'`` (over the batch), ``'sum'`` or ``'none'``.

    Returns:
        Tensor: the loss per sequence (B,) with ``reduction='none'``, else a scalar.
        Differentiable in every float input.

    Raises:
        ValueError: a bad reduction, or gold tags, lengths or energies of the wrong shape or
            dtype, named in the message.

    Example:
        >>> from ebm_ext import losses
        >>> unary = torch.tensor([[[0., 1.], [1., 0.], [0., 2.]]])
        >>> trans = torch.tensor([[0., 3.], [3., 0.]])
        >>> gold = torch.tensor([[0, 1, 1]])
        >>> losses.margin_rescaled_hinge(unary, trans, gold, losses.hamming_cost(2))
        tensor(6.)
    """
    _check_gold("margin_rescaled_hinge", unary, gold, lengths)
    e_gold = chain_energy(unary, trans, gold, lengths, start, end)
    e_hat, delta, _ = loss_augmented_viterbi(unary, trans, gold, cost, lengths, start, end)
    return _reduce(torch.relu(delta - e_hat + e_gold), reduction)


def hamming_cost(num_tags: int, dtype: torch.dtype = torch.float32,
                 device: Optional[torch.device] = None) -> Tensor:
    """The Hamming cost 1 - I: one unit of cost per wrong tag.

    Args:
        num_tags (int): K, >= 1.
        dtype (torch.dtype): a floating dtype.
        device (torch.device, optional): the device.

    Returns:
        Tensor[K, K]: the cost matrix.

    Raises:
        ValueError: a num_tags that is not a positive integer, or a non-floating dtype.

    Example:
        >>> ebm_ext.losses.hamming_cost(2)
        tensor([[0., 1.],
                [1., 0.]])
    """
    if isinstance(num_tags, bool) or not isinstance(num_tags, int) or num_tags < 0:
        raise ValueError(f"hamming_cost: num_tags must be an int >= 0, got {num_tags!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"hamming_cost: dtype must be a floating-point dtype, got {dtype}")
    return 1.0 - torch.eye(num_tags, dtype=dtype, device=device)


def category_cost(categories, same_category: float = 0.5, dtype: torch.dtype = torch.float32,
                  device: Optional[torch.device] = None) -> Tensor:
    """A cost of 0 for the same tag, ``same_category`` within a category, 1 otherwise.

    Args:
        categories (sequence): one category id (or name) per tag.
        same_category (float): the cost of another tag of the same category.
        dtype (torch.dtype): a floating dtype.
        device (torch.device, optional): the device.

    Returns:
        Tensor[K, K]: the cost matrix.

    Example:
        >>> ebm_ext.losses.category_cost(["noun", "noun", "verb"])
        tensor([[0.0000, 0.5000, 1.0000],
                [0.5000, 0.0000, 1.0000],
                [1.0000, 1.0000, 0.0000]])
    """
    ids = {c: i for i, c in enumerate(dict.fromkeys(categories))}
    cat = torch.tensor([ids[c] for c in categories], device=device)
    same = (cat[:, None] == cat[None, :]).to(dtype)
    cost = 1.0 - (1.0 - same_category) * same
    return cost.fill_diagonal_(0.0)


# ---- the criteria of a chain-energy model, by name ---------------------------------------------

ChainParams = Tuple[Tensor, Tensor, Tensor]  # (trans, start, end)


def _token_nll(unary, chain, gold, lengths, margin, cost):
    return token_nll(unary, gold, lengths)


def _crf_nll(unary, chain, gold, lengths, margin, cost):
    trans, start, end = chain
    return crf_nll(unary, trans, gold, lengths, start, end)


def _perceptron(unary, chain, gold, lengths, margin, cost):
    trans, start, end = chain
    return perceptron(unary, trans, gold, lengths, start, end)


def _margin(unary, chain, gold, lengths, margin, cost):
    trans, start, end = chain
    return margin_hinge(unary, trans, gold, margin, lengths, start, end)


def _margin_rescaled(unary, chain, gold, lengths, margin, cost):
    trans, start, end = chain
    return margin_rescaled_hinge(unary, trans, gold, margin * cost.to(unary.dtype), lengths,
                                 start, end)


@dataclasses.dataclass(frozen=True)
class Criterion:
    """A training criterion of a chain-energy model, as ``CRITERIA`` registers them.

    Args:
        loss (callable): ``loss(unary, (trans, start, end), gold, lengths, margin, cost)``, the
            mean loss.
        uses_chain (bool): whether it reads the transitions (decoding is then Viterbi) or only
            the unary energies (the per-position argmin).
        cost (str, optional): None, or which cost matrix it needs (``'hamming'`` or
            ``'category'``, see ``make_cost``), which it scales by the margin.
    """
    loss: Callable
    uses_chain: bool = True
    cost: Optional[str] = None


# Adding a criterion is one entry here (and its loss above).
CRITERIA: Dict[str, Criterion] = {
    "token_nll": Criterion(_token_nll, uses_chain=False),
    "crf_nll": Criterion(_crf_nll),
    "perceptron": Criterion(_perceptron),
    "margin": Criterion(_margin),
    "margin_rescaled": Criterion(_margin_rescaled, cost="hamming"),
    "margin_rescaled_category": Criterion(_margin_rescaled, cost="category"),
}


def criterion(name: str) -> Criterion:
    """The registered criterion ``name``.

    Args:
        name (str): a key of ``CRITERIA``.

    Returns:
        Criterion: the criterion.

    Raises:
        ValueError: an unknown name; the message lists the choices.

    Example:
        >>> ebm_ext.losses.criterion("crf_nll").uses_chain
        True
    """
    if name not in CRITERIA:
        raise ValueError(f"criterion must be one of {tuple(CRITERIA)}, got {name!r}")
    return CRITERIA[name]


def make_cost(kind: Optional[str], num_tags: int, categories=None) -> Optional[Tensor]:
    """The cost matrix a criterion needs.

    Args:
        kind (str, optional): None, ``'hamming'`` (1 - I) or ``'category'`` (0.5 within a
            category of ``categories``).
        num_tags (int): K.
        categories (sequence, optional): one category per tag, for ``'category'``.

    Returns:
        Tensor[K, K] or None: the cost matrix, None for ``kind=None``.
    """
    if kind is None:
        return None
    if kind == "hamming":
        return hamming_cost(num_tags)
    if kind == "category":
        if categories is None or len(categories) != num_tags:
            raise ValueError(f"make_cost: the category cost needs one category per tag "
                             f"({num_tags}), got {categories!r}")
        return category_cost(categories)
    raise ValueError(f"make_cost: kind must be None, 'hamming' or 'category', got {kind!r}")
