"""Inference beyond exact decoding: gradient descent on relaxed tags for any energy written in
PyTorch (SPENs, Belanger & McCallum 2016), a global tag-language-model energy to add to the
chain energy, and inference networks (Tu & Gimpel 2018): a network A(x) trained to output the
argmin of E(x, .), which then decodes as fast as a feed-forward tagger.

Relaxed tags are per-position distributions y (B, T, K); energies are lower-is-better. For the
chain energy alone, ``ebm_ext.chain_relaxed_inference`` is the fused kernel of the same loop.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .nn import local_decode
from .ops import chain_energy, project_simplex


def gradient_inference(energy_fn: Callable[[Tensor], Tensor], y0: Tensor, steps: int = 50,
                       lr: float = 0.1, method: str = "entropic", momentum: float = 0.0,
                       tol: Optional[float] = None, entropy: float = 0.0,
                       mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Minimise an energy over relaxed y on the simplex by gradient descent through autograd.

    With v the heavy-ball velocity and H(y) = -sum y log y::

        v <- momentum * v + d/dy [E(y) - entropy * H(y)]
        y <- softmax(log y - lr v)         ('entropic': exponentiated gradient)
        y <- project_simplex(y - lr v)     ('projected')

    Args:
        energy_fn (callable): maps y (B, ..., K) to energies (B,).
        y0 (Tensor[B, ..., K], float): the start, on the simplex of the last dimension.
        steps (int): the most steps.
        lr (float): the step size.
        method (str): ``'entropic'`` or ``'projected'``.
        momentum (float): the heavy ball's weight.
        tol (float, optional): a sample stops (and stays frozen) once no entry moves by more.
        entropy (float): > 0 smooths the energy towards the interior.
        mask (Tensor[B, ..., 1], optional): the real positions; padded ones are kept at 0.

    Returns:
        tuple[Tensor, Tensor[B], Tensor[B]]: ``(y, energy of y, steps taken)``. The parameters
        inside energy_fn get no gradient from this loop.

    Example:
        >>> from ebm_ext.inference import gradient_inference
        >>> unary = torch.tensor([[[0., 1.], [1., 0.], [0., 2.]]])
        >>> trans = torch.tensor([[0., 3.], [3., 0.]])
        >>> y, energy, steps = gradient_inference(
        ...     lambda y: ebm_ext.chain_energy(unary, trans, y), torch.full((1, 3, 2), 0.5), lr=0.5)
        >>> y.argmax(-1)
        tensor([[0, 0, 0]])
    """
    if method not in ("entropic", "projected"):
        raise ValueError(f"gradient_inference: method must be 'entropic' or 'projected', got {method!r}")
    if steps < 0 or not lr > 0 or not 0 <= momentum < 1 or entropy < 0:
        raise ValueError(f"gradient_inference: need steps >= 0, lr > 0, 0 <= momentum < 1, entropy >= 0; "
                         f"got steps={steps}, lr={lr}, momentum={momentum}, entropy={entropy}")
    y = y0.detach().clone()
    velocity = torch.zeros_like(y)
    batch = y.shape[0]
    active = torch.ones(batch, dtype=torch.bool, device=y.device)
    taken = torch.zeros(batch, dtype=torch.long, device=y.device)
    view = (batch,) + (1,) * (y.dim() - 1)
    for _ in range(steps):
        with torch.enable_grad():
            q = y.detach().requires_grad_()
            objective = energy_fn(q).sum()
            if entropy > 0:
                objective = objective + entropy * (q * torch.log(q.clamp_min(1e-30))).sum()
            (grad,) = torch.autograd.grad(objective, q)
        with torch.no_grad():
            velocity = momentum * velocity + grad
            if method == "entropic":
                new = torch.softmax(torch.log(y.clamp_min(0)) - lr * velocity, -1)
            else:
                new = project_simplex(y - lr * velocity)
            moving = active.view(view)
            if tol is not None:
                change = (new - y).abs().flatten(1).amax(1)
            y = torch.where(moving, new, y)
            taken += active.long()
            if tol is not None:
                active = active & (change > tol)
                if not active.any():
                    break
    if mask is not None:
        y = y * mask
    with torch.no_grad():
        energy = energy_fn(y)
    return y, energy, taken


class TagLanguageModel(nn.Module):
    """A global energy over (relaxed) tag sequences: an LSTM tag language model.

    The LSTM reads y_0 .. y_(t-1) (relaxed tags embedded as y_t @ E) and predicts y_t; the energy
    is the cross-entropy -sum_t sum_k y_tk log P(k | y_<t) over the positions t < L. On one-hot
    tags it is the sequence's negative log-likelihood, which is how it is trained.

    Args:
        num_tags (int): K.
        dim (int): the tag embedding's width.
        hidden (int): the LSTM's state size.
    """

    def __init__(self, num_tags: int, dim: int = 32, hidden: int = 64):
        super().__init__()
        self.embed = nn.Linear(num_tags, dim, bias=False)
        self.begin = nn.Parameter(torch.zeros(dim))
        self.lstm = nn.LSTM(dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, num_tags)

    def forward(self, y: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """The energy of (relaxed) tag sequences: their cross-entropy under the tag LM.

        Args:
            y (Tensor[B, T, K], float): relaxed (or one-hot) tags.
            lengths (Tensor[B], int64, optional): the lengths; None: all T.

        Returns:
            Tensor[B]: -sum_t sum_k y_tk log P(k | y_<t) over t < L; differentiable in y.
        """
        B, T, K = y.shape
        if T == 0:
            return y.new_zeros(B)
        inputs = torch.cat([self.begin.expand(B, 1, -1), self.embed(y[:, :-1])], dim=1)
        h, _ = self.lstm(inputs)
        log_probs = torch.log_softmax(self.out(h), -1)
        per_position = -(y * log_probs).sum(-1)
        if lengths is not None:
            per_position = per_position * (torch.arange(T, device=y.device)[None, :] < lengths[:, None])
        return per_position.sum(1)

    def nll(self, tags: Tensor, lengths: Tensor) -> Tensor:
        """The mean negative log-likelihood per sequence of gold tags: the LM's training loss.

        Args:
            tags (Tensor[B, T], int64): gold tags, -1 padding.
            lengths (Tensor[B], int64): the lengths.

        Returns:
            Tensor: a scalar.
        """
        one_hot = nn.functional.one_hot(tags.clamp_min(0), self.out.out_features).to(self.begin.dtype)
        return self.forward(one_hot, lengths).mean()


def chain_plus_tag_lm(unary: Tensor, trans: Tensor, lengths: Optional[Tensor], start: Optional[Tensor],
                      end: Optional[Tensor], tag_lm: TagLanguageModel, weight: float) -> Callable[[Tensor], Tensor]:
    """The energy y -> chain_energy(unary, trans, y) + weight * tag_lm(y), for gradient_inference.

    Args:
        unary, trans, lengths, start, end: the chain energy, as in ``ebm_ext.chain_energy``.
        tag_lm (TagLanguageModel): the global energy.
        weight (float): its weight.

    Returns:
        callable: y (B, T, K) -> energies (B,).
    """
    return lambda y: chain_energy(unary, trans, y, lengths, start, end) + weight * tag_lm(y, lengths)


class InferenceNetwork(nn.Module):
    """An inference network A(x): relaxed tags (B, T, K) = softmax of a network's scores.

    Trained to minimise an energy E(x, A(x)) (``energy_loss``) instead of searching for the
    argmin at test time; decoding is then one network pass and an argmax.

    Args:
        features (nn.Module): maps a batch to (B, T, K) scores; for a tagger, a
            ``FeatureNetwork``, whose outputs are energies: A(x) = softmax(-features(x)).
    """

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features

    def forward(self, batch) -> Tensor:
        """A(x): relaxed tags, the softmax of minus the network's energies.

        Args:
            batch: what ``features`` takes (a tagger's Batch).

        Returns:
            Tensor[B, T, K]: distributions over the tags at each position.
        """
        return torch.softmax(-self.features(batch), -1)

    def decode(self, batch) -> Tensor:
        """Tags: the argmax of A(x), -1 past each length.

        Args:
            batch: what ``features`` takes; it must have ``lengths``.

        Returns:
            Tensor[B, T], int64: the tags.
        """
        return local_decode(self.features(batch), batch.lengths)
