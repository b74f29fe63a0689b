"""A property-based probe of every public op with bad and edge inputs (hypothesis): each call
either raises RuntimeError/ValueError whose message starts with the op's name and names one of
its arguments, or returns what the op returns on contiguous copies of the same inputs; when the
inputs are also finite and well-formed, that equals the plain-PyTorch reference
(ebm_ext._reference). Nothing may crash, hang or raise another type."""
import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ebm_ext
from ebm_ext import _reference as ref

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPECIALS = [math.nan, math.inf, -math.inf, 1e30, -1e30, 0.0]


@st.composite
def energies(draw, shape, dtype):
    """A tensor of `shape`: normal values, sometimes with specials planted, sometimes stored
    non-contiguously."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    if x.numel() and draw(st.booleans()):
        for _ in range(draw(st.integers(1, 3))):
            x.view(-1)[draw(st.integers(0, x.numel() - 1))] = draw(st.sampled_from(SPECIALS))
    x = x.to(dtype)
    if x.dim() >= 2 and draw(st.booleans()):  # the same values through a transposed view
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    return x


@st.composite
def mutated(draw, good, name, kinds):
    """`good`, or one mutation of it (None, wrong shape, wrong dtype, integer, a 0-d tensor, a
    Python number); returns (value, which mutation)."""
    kind = draw(st.sampled_from(["good"] * 4 + kinds))
    if kind == "good":
        return good, kind
    if kind == "none":
        return None, kind
    if kind == "shape":
        return good.reshape(-1)[:-1] if good.numel() else torch.zeros(3, dtype=good.dtype), kind
    if kind == "extra_dim":
        return good.unsqueeze(0), kind
    if kind == "dtype":
        other = torch.float64 if good.dtype == torch.float32 else torch.float32
        return good.to(other) if good.is_floating_point() else good.float(), kind
    if kind == "int":
        return good.to(torch.int32), kind
    if kind == "half":
        return good.half() if good.is_floating_point() else good, kind
    if kind == "scalar":
        return torch.tensor(1.0, dtype=good.dtype if good.is_floating_point() else torch.float32), kind
    raise AssertionError(kind)


TENSOR_BAD = ["none", "shape", "extra_dim", "dtype", "int", "half", "scalar"]


def _contiguous(x):
    return x.contiguous() if isinstance(x, torch.Tensor) else x


def _same(a, b):
    if isinstance(a, (tuple, list)):
        for x, y in zip(a, b):
            _same(x, y)
        return
    torch.testing.assert_close(a, b, equal_nan=True, atol=1e-6, rtol=1e-6)


def probe(op_name, fn, args: dict, reference=None, bound=(), inner=()):
    """Runs fn(**args); checks the error or the result as the module docstring says. `bound`:
    names of the arguments fn passes itself; `inner`: the ops a composite (a loss) calls, whose
    checks may answer for it."""
    try:
        out = fn(**args)
    except (RuntimeError, ValueError) as e:
        message = str(e)
        assert any(message.startswith(f"{op}:") for op in (op_name, *inner)), message
        names = [n for n in [*args, *bound] if re.search(rf"\b{n}\b", message)]
        assert names or "k * K" in message or "would need" in message, message
        return None
    except Exception as e:  # any other type is a bug: a crash the user cannot read
        raise AssertionError(f"{op_name} raised {type(e).__name__}: {e}") from e
    again = fn(**{k: _contiguous(v) for k, v in args.items()})
    _same(out, again)
    if reference is not None:
        tensors = [v for v in args.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
        if all(torch.isfinite(t).all() and (t.numel() == 0 or t.abs().max() < 1e6) for t in tensors):
            _same(out, reference(**args))
    return out


@st.composite
def chain_problem(draw, with_gold=False):
    B, T, K = draw(st.integers(0, 3)), draw(st.integers(0, 4)), draw(st.integers(1, 4))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    unary, _ = draw(mutated(draw(energies((B, T, K), dtype)), "unary", TENSOR_BAD))
    trans, _ = draw(mutated(draw(energies((K, K), dtype)), "trans", TENSOR_BAD))
    lengths_kind = draw(st.sampled_from(["none", "good", "good", "too_long", "negative", "float",
                                         "int32", "shape"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    lengths = {
        "none": None,
        "good": torch.randint(0, T + 1, (B,), generator=g),
        "too_long": torch.full((B,), T + 1),
        "negative": torch.full((B,), -1),
        "float": torch.full((B,), float(T)),
        "int32": torch.full((B,), T, dtype=torch.int32),
        "shape": torch.full((B + 1,), T),
    }[lengths_kind]
    start = draw(st.one_of(st.none(), energies((K,), dtype)))
    end = draw(st.one_of(st.none(), energies((K,), dtype)))
    args = dict(unary=unary, trans=trans, lengths=lengths, start=start, end=end)
    if with_gold:
        gold_kind = draw(st.sampled_from(["good", "good", "float", "out_of_range", "shape"]))
        gold = torch.randint(0, K, (B, T), generator=g)
        gold = {"good": gold, "float": gold.float(), "out_of_range": gold + K,
                "shape": gold[:, :-1] if T else torch.zeros(B, 1, dtype=torch.long)}[gold_kind]
        args["gold"] = gold
    return args


@SETTINGS
@given(chain_problem())
def test_probe_decoders_and_partition(args):
    probe("viterbi", ebm_ext.viterbi, args, ref.viterbi)
    probe("chain_log_partition", ebm_ext.chain_log_partition, args, ref.chain_log_partition)
    probe("chain_marginals", ebm_ext.chain_marginals, args, ref.chain_marginals)
    probe("viterbi_kbest", lambda **a: ebm_ext.viterbi_kbest(k=2, **a), args,
          lambda **a: ref.viterbi_kbest(k=2, **a), bound=["k"])
    probe("chain_entropy", ebm_ext.chain_entropy, args, inner=["chain_expectation"])
    probe("chain_sample", lambda **a: ebm_ext.chain_sample(
        sample_shape=2, generator=torch.Generator().manual_seed(0), **a), args)


@SETTINGS
@given(chain_problem(with_gold=True), st.sampled_from(["hamming", "negative", "nan", "shape"]))
def test_probe_energy_and_cost_augmented(args, cost_kind):
    gold = args.pop("gold")
    probe("chain_energy", lambda **a: ebm_ext.chain_energy(tags=gold, **a), args,
          lambda **a: ref.chain_energy(tags=gold, **a), bound=["tags"])
    K = args["unary"].shape[-1] if isinstance(args["unary"], torch.Tensor) and args["unary"].dim() else 1
    unary = args["unary"]
    dtype = unary.dtype if isinstance(unary, torch.Tensor) and unary.is_floating_point() else torch.float32
    cost = {"hamming": 1 - torch.eye(K, dtype=dtype), "negative": -torch.ones(K, K, dtype=dtype),
            "nan": torch.full((K, K), math.nan, dtype=dtype), "shape": torch.zeros(K + 1, K, dtype=dtype)}[cost_kind]
    probe("loss_augmented_viterbi",
          lambda **a: ebm_ext.loss_augmented_viterbi(gold=gold, cost=cost, **a), args,
          bound=["gold", "cost"])
    probe("crf_nll", lambda **a: ebm_ext.losses.crf_nll(gold=gold, **a), args, bound=["gold"],
          inner=["chain_energy", "chain_log_partition"])


@SETTINGS
@given(st.integers(0, 3), st.integers(1, 5), st.sampled_from([torch.float32, torch.float64]),
       st.data())
def test_probe_simplex_kmeans_sparse(B, K, dtype, data):
    v, _ = data.draw(mutated(data.draw(energies((B, K), dtype)), "v", ["none", "int", "scalar", "half"]))
    out = probe("project_simplex", ebm_ext.project_simplex, {"v": v}, ref.project_simplex)
    if out is not None and v.numel() and torch.isfinite(v).all():
        torch.testing.assert_close(out.double().sum(-1), torch.ones(v.shape[:-1], dtype=torch.float64))
        assert (out >= 0).all()
    y, _ = data.draw(mutated(data.draw(energies((B, 3), dtype)), "y", TENSOR_BAD))
    W, _ = data.draw(mutated(data.draw(energies((K, 3), dtype)), "W", TENSOR_BAD))
    probe("nearest_centroid", ebm_ext.nearest_centroid, {"y": y, "W": W})
    D, _ = data.draw(mutated(data.draw(energies((3, K), dtype)), "D", TENSOR_BAD))
    lam = data.draw(st.sampled_from([0.1, 0.0, -1.0, math.nan, math.inf]))
    out = probe("sparse_code", lambda **a: ebm_ext.sparse_code(lam=lam, max_iter=200, **a),
                {"y": y, "D": D}, bound=["lam"])
    if out is not None and isinstance(y, torch.Tensor) and y.numel() and torch.isfinite(y).all():
        assert torch.isfinite(out).all()


@SETTINGS
@given(chain_problem(), st.sampled_from([0.5, 0.0, -1.0, math.nan, 1e39]),
       st.sampled_from(["entropic", "projected", "newton"]))
def test_probe_relaxed_inference(args, lr, method):
    probe("chain_relaxed_inference",
          lambda **a: ebm_ext.chain_relaxed_inference(steps=3, lr=lr, method=method, **a), args,
          bound=["lr", "method"])
