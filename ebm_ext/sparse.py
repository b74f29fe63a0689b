"""Dictionary learning as an energy-based model, with scikit-learn's estimator API.

The energy E(y, z) = ||y - D z||^2 + lam ||z||_1 (ebm_ext.nn.SparseCodingEnergy) is lowered on
the data by minibatch gradient steps on D of the mean free energy F(y) = min_z E(y, z): for
each minibatch the codes come from ebm_ext.sparse_code (FISTA), the gradient
dF/dD = -2 (y - D z*) z*^T from the envelope theorem (no unrolling); Adam takes a step and
every atom is rescaled to unit norm (otherwise the L1 term is cheated by growing D and
shrinking z). Gradient steps rather than Mairal et al.'s block-coordinate updates, because they
are what the energy-based view gives for free: any differentiable energy trains the same way::

    dl = DictionaryLearning(256, lam=0.2, epochs=20, seed=0).fit(patches)     # (N, n)
    dl.components_ (m, n) atoms as rows, dl.dictionary (n, m) as columns, dl.history_
    codes = dl.transform(patches)                                                # (N, m)
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._estimators import progress, rows
from .nn import SparseCodingEnergy
from .ops import sparse_coding_energy

__all__ = ["DictionaryLearning", "learn_dictionary"]


def learn_dictionary(train: Tensor, atoms: int, lam: float, epochs: int = 5, batch_size: int = 256,
                     lr: float = 1e-3, seed: int = 0, held_out: Optional[Tensor] = None,
                     show_progress: bool = False, **solver) -> tuple[SparseCodingEnergy, list[dict]]:
    """Minibatch gradient descent on the mean sparse-coding free energy.

    The atoms are renormalised to unit norm after each step (the L1 term is otherwise cheated by
    growing D and shrinking z); they start as ``atoms`` training rows.

    Args:
        train (Tensor[N, n], float): the samples.
        atoms (int): m.
        lam (float): the L1 weight.
        epochs, batch_size, lr (int, int, float): the descent (Adam).
        seed (int): the start and the order.
        held_out (Tensor[N2, n], optional): samples to report on after each epoch.
        show_progress (bool): tqdm bars.
        **solver: ``sparse_code``'s options.

    Returns:
        tuple[SparseCodingEnergy, list[dict]]: the model and one record per epoch (the last
        batch's energy; with ``held_out``, its mean free energy and fraction of nonzero codes).
    """
    g = torch.Generator().manual_seed(seed)
    start = train[torch.randperm(len(train), generator=g)[:atoms]].t()
    model = SparseCodingEnergy(train.shape[1], atoms, lam, start, **solver)
    model.normalise_atoms()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for epoch in progress(range(1, epochs + 1), show_progress, desc="epochs"):
        for batch in progress(torch.randperm(len(train), generator=g).split(batch_size),
                               show_progress, desc=f"epoch {epoch}"):
            loss = model(train[batch]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.normalise_atoms()
        record = {"epoch": epoch, "train_batch_energy": loss.item()}
        if held_out is not None:
            with torch.no_grad():
                energy, z = energy_and_codes(model, held_out)
            record.update(held_out_energy=energy.mean().item(),
                          nonzero=(z != 0).float().mean().item())
        history.append(record)
    return model, history


def energy_and_codes(model: SparseCodingEnergy, y: Tensor) -> tuple[Tensor, Tensor]:
    """The free energy and the codes of y under a model's dictionary.

    Args:
        model (SparseCodingEnergy): the model.
        y (Tensor[B, n], float): the samples.

    Returns:
        tuple[Tensor[B], Tensor[B, m]]: ``(free energy, codes)``, detached.
    """
    return sparse_coding_energy(y, model.D, model.lam, return_codes=True, **model.solver)


class DictionaryLearning:
    """Learns m unit-norm atoms for rows y (N, n) by lowering the sparse-coding free energy.

    Args:
        n_components: m, the number of atoms (at most N: they start as m training rows).
        lam: the L1 weight.
        epochs, batch_size, lr: the minibatch gradient descent.
        seed: the start and the minibatch order.
        show_progress: tqdm bars.
        **solver: sparse_code's options (max_iter, tol, method, nonneg, ...).

    After ``fit``, the properties ``components_`` (the atoms as rows, scikit-learn's layout) and
    ``dictionary`` (as columns) give the atoms.

    Attributes:
        model_ (ebm_ext.nn.SparseCodingEnergy): the energy holding the atoms, after ``fit``.
        history_ (list of dict): one record per epoch.
    """

    def __init__(self, n_components: int, *, lam: float = 0.1, epochs: int = 5,
                 batch_size: int = 256, lr: float = 1e-3, seed: int = 0,
                 show_progress: bool = False, **solver):
        if not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f"DictionaryLearning: n_components must be an int >= 1, got "
                             f"{n_components!r}")
        if not lam >= 0:
            raise ValueError(f"DictionaryLearning: lam must be >= 0, got {lam}")
        self.n_components, self.lam = n_components, float(lam)
        self.epochs, self.batch_size, self.lr, self.seed = epochs, batch_size, lr, seed
        self.show_progress, self.solver = show_progress, solver

    def fit(self, y, held_out: Optional[Tensor] = None) -> "DictionaryLearning":
        """Learns the atoms on the rows of y.

        Args:
            y (Tensor or array, [N, n]): the data; N >= n_components.
            held_out (Tensor[N2, n], optional): rows to report on after each epoch.

        Returns:
            DictionaryLearning: self, with ``components_``, ``model_`` and ``history_``.

        Raises:
            ValueError: data of the wrong shape, or fewer rows than atoms.
        """
        y = rows(y, "DictionaryLearning.fit", "(N, n)")
        if self.n_components > y.shape[0]:
            raise ValueError(f"DictionaryLearning.fit: n_components ({self.n_components}) must be "
                             f"at most the number of rows ({y.shape[0]}): the atoms start as rows")
        self.model_, self.history_ = learn_dictionary(
            y, self.n_components, self.lam, self.epochs, self.batch_size, self.lr, self.seed,
            held_out, self.show_progress, **self.solver)
        return self

    def _model(self, op: str) -> SparseCodingEnergy:
        if not hasattr(self, "model_"):
            raise RuntimeError(f"DictionaryLearning.{op}: call fit first")
        return self.model_

    @property
    def dictionary(self) -> Tensor:
        """The atoms as columns, Tensor[n, m] (D of the energy)."""
        return self._model("dictionary").D.detach()

    @property
    def components_(self) -> Tensor:
        """The atoms as rows, Tensor[m, n] (scikit-learn's layout)."""
        return self.dictionary.t()

    def transform(self, y) -> Tensor:
        """The sparse codes z* of each row.

        Args:
            y (Tensor or array, [N, n]): the data.

        Returns:
            Tensor[N, m]: the codes.
        """
        return self._model("transform").codes(rows(y, "DictionaryLearning.transform", "(N, n)"))

    def fit_transform(self, y) -> Tensor:
        """``fit(y)``, then the codes of y.

        Args:
            y (Tensor or array, [N, n]): the data.

        Returns:
            Tensor[N, m]: the codes.
        """
        return self.fit(y).transform(y)

    def free_energy(self, y) -> Tensor:
        """The free energy F(y) = min_z E(y, z) of each row.

        Args:
            y (Tensor or array, [N, n]): the data.

        Returns:
            Tensor[N]: the free energies.
        """
        model = self._model("free_energy")
        with torch.no_grad():
            return model(rows(y, "DictionaryLearning.free_energy", "(N, n)"))
