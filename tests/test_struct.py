"""ebm_ext.struct.LinearChainCRF against torch-struct 0.5's LinearChainCRF, member for member, on
general edge potentials (a transition matrix per edge and sequence), float64 to 1e-9."""
import math
import warnings

import pytest
import torch

import ebm_ext
from ebm_ext.struct import LinearChainCRF

torch_struct = pytest.importorskip("torch_struct")


def theirs(phi, lengths):
    with warnings.catch_warnings():  # it defines no arg_constraints
        warnings.simplefilter("ignore")
        return torch_struct.LinearChainCRF(phi, lengths=lengths)


def potentials(seed, B=5, N=6, C=4, forbid=False):
    g = torch.Generator().manual_seed(seed)
    phi = torch.randn(B, N - 1, C, C, generator=g, dtype=torch.float64)
    if forbid:
        phi[1, 2, 0, :] = -math.inf  # one edge of one sequence only
    lengths = torch.randint(1, N + 1, (B,), generator=g)
    lengths[0] = N
    return phi, lengths


close = lambda a, b: torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)  # noqa: E731


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_member_matches_torch_struct(seed):
    phi, L = potentials(seed)
    ours, ref = LinearChainCRF(phi, L), theirs(phi, L)
    close(ours.partition, ref.partition)
    close(ours.marginals, ref.marginals)
    close(ours.entropy, ref.entropy)
    close(ours.max, ref.max)
    assert torch.equal(ours.argmax, ref.argmax.detach())
    assert torch.equal(ours.mode, ref.mode.detach())
    close(ours.kmax(3), ref.kmax(3))
    assert torch.equal(ours.topk(3), ref.topk(3).detach())
    close(ours.count, ref.count.double())
    other_phi, _ = potentials(seed + 10)
    ours_q, ref_q = LinearChainCRF(other_phi, L), theirs(other_phi, L)
    close(ours.kl(ours_q), ref.kl(ref_q))
    close(torch.distributions.kl_divergence(ours, ours_q), ref.kl(ref_q))
    close(ours.cross_entropy(ours_q), ref.cross_entropy(ref_q))
    value = ref.topk(2).detach()
    close(ours.log_prob(value), ref.log_prob(value))
    tags = torch.randint(0, 4, (5, 6), generator=torch.Generator().manual_seed(seed))
    event = torch_struct.LinearChain.to_parts(tags, 4, L)
    assert torch.equal(LinearChainCRF.to_event(tags, 4, L), event)
    full = torch_struct.LinearChain.to_parts(tags, 4)
    assert torch.equal(LinearChainCRF.from_event(full)[0], torch_struct.LinearChain.from_parts(full)[0])


def test_gradients_match_torch_struct():
    phi, L = potentials(3)
    for what in ("partition", "entropy", "marginals"):
        grads = []
        for make in (LinearChainCRF, theirs):
            p = phi.clone().requires_grad_()
            d = make(p, L)
            value = getattr(d, what)
            if what == "marginals":
                value = value * torch.linspace(-1, 1, value.numel(), dtype=value.dtype).view_as(value)
            grads.append(torch.autograd.grad(value.sum(), p)[0])
        close(*grads)
    # the idiom: d partition / d phi is the edge marginals
    p = phi.clone().requires_grad_()
    d = LinearChainCRF(p, L)
    close(torch.autograd.grad(d.partition.sum(), p)[0], d.marginals.detach())


def test_samples_are_edge_structures_of_allowed_paths():
    phi, L = potentials(4, forbid=True)
    dist = LinearChainCRF(phi, L)
    s = dist.sample((50,))
    assert s.shape == (50, 5, 5, 4, 4)
    assert torch.all(s.sum((-2, -1)) == (torch.arange(5) < (L - 1)[:, None]).double())
    assert not (s[:, 1, 2, 0, :] != 0).any()  # the forbidden edge is never drawn
    assert torch.isfinite(dist.log_prob(s)).all()


def test_count_is_exact():
    C, N = 3, 40  # 33 nodes: 3^33 < 2^53 paths, exact in float64 (34 nodes would not fit)
    phi = torch.zeros(2, N - 1, C, C, dtype=torch.float64)
    phi[1, :, 0, 1] = -math.inf  # 1 -> 0 forbidden in sequence 1
    L = torch.tensor([33, 33])
    count = LinearChainCRF(phi, L).count
    assert count[0].item() == 3 ** 33
    # sequence 1: paths avoiding 1 -> 0, by a small integer recursion in Python
    c = [1, 1, 1]
    for _ in range(32):
        c = [c[0] + c[2], sum(c), sum(c)]  # into 0 from 0 or 2; into 1 and 2 from anywhere
    assert count[1].item() == sum(c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_is_at_most_partition_on_ties(dtype):
    # one allowed path (the others forbidden) and ties everywhere: log Z == max exactly
    phi = torch.full((3, 6, 4, 4), -math.inf, dtype=dtype)
    phi[:, :, 1, 2] = 0.3
    phi[:, :, 2, 1] = -1.7
    phi[0, 0] = 0.1  # sequence 0: all 16 moves at the first edge, tied
    dist = LinearChainCRF(phi)
    assert torch.all(dist.max <= dist.partition)
    crf = dist._crf
    for args in [(crf.unary, crf.trans), (crf.unary.expand(3, 7, 4).contiguous(), crf.trans[0, 0])]:
        assert torch.all(ebm_ext.viterbi(*args)[0].neg() <= ebm_ext.chain_log_partition(*args))
