"""bilstm against nn.LSTM(bidirectional=True) on the same PackedSequence (outputs and every
gradient), packed_order against pack_padded_sequence, gradcheck, opcheck, compile, bad inputs,
CPU == CUDA."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import ebm_ext
from ebm_ext.nn import BiLSTM
from conftest import requires_cuda, tolerance
from cuda_backends import skip_compile_if_emulated


def make_case(lengths, I, H, dtype=torch.float64, device="cpu", seed=0):
    """An nn.LSTM, the same weights as a BiLSTM, and a packed batch of random inputs."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(I, H, batch_first=True, bidirectional=True).to(dtype)
    lengths = torch.tensor(lengths)
    B, T = len(lengths), int(lengths.max())
    x = torch.randn(B, T, I, generator=g, dtype=dtype)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    return lstm.to(device), BiLSTM.from_lstm(lstm).to(device), packed


def reference(lstm, packed, data):
    out, _ = lstm(PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                                 packed.unsorted_indices))
    return out.data


def lstm_grads(lstm):
    return {"weight_ih": torch.stack([lstm.weight_ih_l0.grad, lstm.weight_ih_l0_reverse.grad]),
            "weight_hh": torch.stack([lstm.weight_hh_l0.grad, lstm.weight_hh_l0_reverse.grad]),
            # the one bias of BiLSTM is b_ih + b_hh: its gradient is each one's
            "bias": torch.stack([lstm.bias_ih_l0.grad, lstm.bias_ih_l0_reverse.grad])}


def check_against_lstm(lengths, I, H, dtype, device="cpu", seed=0):
    """Outputs and every gradient against nn.LSTM run in float64, whatever `dtype`: on CUDA,
    cuDNN runs float32 RNNs with TF32 by default (about 2e-4 off), which is not what we test."""
    lstm, ours, packed = make_case(lengths, I, H, dtype, device, seed)
    lstm = lstm.double()
    data = packed.data.to(device)
    x_ref = data.to(torch.float64, copy=True).requires_grad_()
    x = data.clone().requires_grad_()
    want = reference(lstm, packed, x_ref)
    got = ours(x, packed.batch_sizes)
    tol = tolerance(dtype)
    torch.testing.assert_close(got, want.to(dtype), **tol)
    grad = torch.randn(got.shape, generator=torch.Generator().manual_seed(seed + 1),
                       dtype=dtype).to(device)
    want.backward(grad.double())
    got.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad.to(dtype), **tol)
    for name, g in lstm_grads(lstm).items():
        torch.testing.assert_close(getattr(ours, name).grad, g.to(dtype), **tol, msg=name)


@pytest.mark.parametrize("lengths,I,H", [
    ([7, 3, 7, 1, 5], 6, 20),      # unsorted, repeated and unit lengths
    ([1], 3, 1),                   # one token, one hidden unit
    ([12] * 4, 5, 17),             # all the same length, H not a multiple of 16
    ([30, 2, 9, 16, 16, 1, 4], 40, 64),
])
def test_matches_nn_lstm(lengths, I, H, dtype, device):
    check_against_lstm(lengths, I, H, dtype, device)


@settings(deadline=None, max_examples=30)
@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=6), I=st.integers(1, 12),
       H=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_any_shape_matches_nn_lstm(lengths, I, H, seed):
    check_against_lstm(lengths, I, H, torch.float64, seed=seed)


@pytest.mark.parametrize("lengths", [[4, 0, 2, 4], [3], [0, 0]])
def test_packed_order_is_pack_padded_sequence(lengths):
    L = torch.tensor(lengths)
    B, T = len(lengths), 5
    x = torch.arange(B * T, dtype=torch.float64).view(B, T, 1)
    index, batch_sizes = ebm_ext.packed_order(L, T)
    assert index.numel() == batch_sizes.sum() == L.sum()
    keep = L > 0  # pack_padded_sequence refuses empty sequences
    if keep.any():
        packed = pack_padded_sequence(x[keep], L[keep], batch_first=True, enforce_sorted=False)
        ours = x.reshape(B * T, 1)[index]
        assert torch.equal(batch_sizes, packed.batch_sizes)
        # the same positions step by step (within a step, equal lengths may come in any order)
        for t, (lo, n) in enumerate(zip(torch.cumsum(batch_sizes, 0) - batch_sizes, batch_sizes)):
            assert sorted(ours[lo:lo + n, 0].tolist()) == sorted(packed.data[lo:lo + n, 0].tolist())


def test_gradcheck():
    lstm, ours, packed = make_case([4, 2, 3], 3, 4)
    x = packed.data.clone().requires_grad_()
    params = (ours.weight_ih, ours.weight_hh, ours.bias)
    assert torch.autograd.gradcheck(
        lambda x, wi, wh, b: ebm_ext.bilstm(x, packed.batch_sizes, wi, wh, b), (x, *params))


def test_empty_batch():
    ours = BiLSTM(3, 4)
    x = torch.randn(0, 3, requires_grad=True)
    out = ours(x, torch.zeros(0, dtype=torch.long))
    assert out.shape == (0, 8)
    out.sum().backward()
    assert x.grad.shape == (0, 3) and torch.equal(ours.weight_hh.grad, torch.zeros(2, 16, 4))


def test_nan_input_propagates_along_its_sequence_only():
    lstm, ours, packed = make_case([5, 5], 2, 3)
    data = packed.data.clone()
    data[2, 0] = float("nan")  # step 1 of one sequence
    out = ours(data, packed.batch_sizes)
    nan_rows = torch.isnan(out).any(1)
    assert nan_rows[2] and not nan_rows[3]  # the other sequence of step 1 is untouched
    assert nan_rows[0] and not nan_rows[1]  # the right-to-left direction carries it back to step 0


@pytest.mark.parametrize("case", ["bilstm", "_bilstm_backward", "packed_order"])
def test_opcheck(device, case, opcheck_util):
    lstm, ours, packed = make_case([4, 2, 3], 3, 5, device=device)
    x = packed.data.to(device).requires_grad_()
    bs = packed.batch_sizes
    args = (x, bs, ours.weight_ih, ours.weight_hh, ours.bias)
    ops = torch.ops.ebm_ext
    if case == "bilstm":
        op = ops.bilstm.default
    elif case == "_bilstm_backward":
        op = ops._bilstm_backward.default
        output, gates, cells = ops.bilstm(*(a.detach() for a in args))
        args = (torch.ones_like(output), x.detach(), bs, ours.weight_ih.detach(),
                ours.weight_hh.detach(), output, gates, cells)
    else:
        op, args = ops.packed_order.default, (torch.tensor([4, 0, 2, 3], device=device), 5)
    torch.library.opcheck(op, args, test_utils=opcheck_util)


def test_compile(device):
    lstm, ours, packed = make_case([4, 2, 3], 3, 5, device=device)
    x = packed.data.to(device).requires_grad_()
    bs = packed.batch_sizes
    args = (x, bs, ours.weight_ih, ours.weight_hh, ours.bias)

    skip_compile_if_emulated()
    @torch.compile(fullgraph=True, backend="aot_eager")
    def total(x, wi, wh, b):
        return ebm_ext.bilstm(x, bs, wi, wh, b).sum()

    total(*args[:1], *args[2:]).backward()
    want = reference(lstm, packed, packed.data.to(device).requires_grad_())
    want.sum().backward()
    torch.testing.assert_close(ours.weight_hh.grad, lstm_grads(lstm)["weight_hh"])


def test_from_lstm_needs_a_bidirectional_one_layer_lstm():
    with pytest.raises(ValueError, match="one-layer bidirectional"):
        BiLSTM.from_lstm(torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True))
    with pytest.raises(ValueError, match="one-layer bidirectional"):
        BiLSTM.from_lstm(torch.nn.LSTM(3, 4))


def test_initialisation_is_nn_lstms_range():
    m = BiLSTM(7, 25)
    bound = 25 ** -0.5
    assert m.weight_ih.abs().max() <= bound and m.weight_hh.abs().max() <= bound
    assert m.bias.abs().max() <= 2 * bound and m.bias.abs().max() > bound  # b_ih + b_hh


def _args(N=5, I=3, H=4, bs=(2, 2, 1)):
    return [torch.randn(N, I), torch.tensor(bs), torch.randn(2, 4 * H, I), torch.randn(2, 4 * H, H),
            torch.randn(2, 4 * H)]


def _with(i, value):
    args = _args()
    args[i] = value
    return args


@pytest.mark.parametrize("args,message", [
    (_with(0, torch.randn(5, 3, 1)), r"bilstm: input must be a 2-D tensor \(N, I\) of packed rows, got shape \[5, 3, 1\]"),
    (_with(0, torch.randint(0, 3, (5, 3))), r"bilstm: input must be a floating-point tensor, got Long"),
    (_with(0, torch.randn(5, 3).half()), r"bilstm: on CPU, input must be float32 or float64, got Half"),
    (_with(1, torch.tensor([2, 3])), r"bilstm: batch_sizes must be non-increasing .* got 2 then 3 at step 1"),
    (_with(1, torch.tensor([3, 0, 2])), r"bilstm: batch_sizes must be >= 1, got 0 at step 1"),
    (_with(1, torch.tensor([2, 2])), r"bilstm: batch_sizes must sum to input.size\(0\)=5, got 4"),
    (_with(1, torch.tensor([2.0, 2.0, 1.0])), r"bilstm: batch_sizes must be a 1-D int64 CPU tensor"),
    (_with(2, torch.randn(2, 16, 4)), r"bilstm: weight_ih must have shape \[2, 16, 3\], got \[2, 16, 4\]"),
    (_with(3, torch.randn(2, 15, 4)), r"bilstm: weight_hh must have shape \(2, 4H, H\) with H >= 1, got \[2, 15, 4\]"),
    (_with(3, torch.randn(2, 16, 4).double()), r"bilstm: weight_hh must have the same dtype as input \(Float\), got Double"),
    (_with(4, torch.randn(16)), r"bilstm: bias must have shape \[2, 16\], got \[16\]"),
])
def test_bad_inputs(args, message):
    with pytest.raises(RuntimeError, match=message):
        ebm_ext.bilstm(*args)


def test_bad_backward_inputs():
    x, bs, wi, wh, b = _args()
    output, gates, cells = torch.ops.ebm_ext.bilstm(x, bs, wi, wh, b)
    with pytest.raises(RuntimeError, match=r"_bilstm_backward: grad_output must have shape \(N, 2H\) = \(5, 8\), got \[5, 7\]"):
        torch.ops.ebm_ext._bilstm_backward(torch.ones(5, 7), x, bs, wi, wh, output, gates, cells)
    with pytest.raises(RuntimeError, match=r"_bilstm_backward: gates must have shape \(N, 8H\) = \(5, 32\), got \[5, 8\]"):
        torch.ops.ebm_ext._bilstm_backward(torch.ones(5, 8), x, bs, wi, wh, output, cells, cells)


@pytest.mark.parametrize("lengths,I,H", [([7, 3, 7, 1, 5], 6, 20), ([40, 12, 33, 1] * 8, 70, 200)])
def test_cuda_matches_cpu(lengths, I, H, dtype, gpu):
    lstm, ours, packed = make_case(lengths, I, H, dtype)
    x = packed.data.clone().requires_grad_()
    out = ours(x, packed.batch_sizes)
    g = torch.randn_like(out)
    out.backward(g)
    cu = gpu.to(BiLSTM.from_lstm(lstm))
    xc = gpu.to(packed.data).requires_grad_()
    with gpu():
        outc = cu(xc, packed.batch_sizes)
        outc.backward(gpu.to(g))
    tol = tolerance(dtype)
    torch.testing.assert_close(outc.cpu(), out, **tol)
    torch.testing.assert_close(xc.grad.cpu(), x.grad, **tol)
    for name in ("weight_ih", "weight_hh", "bias"):
        torch.testing.assert_close(getattr(cu, name).grad.cpu(), getattr(ours, name).grad, **tol)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_cuda_half_precision_is_close_to_float32(half, gpu):
    lstm, ours, packed = make_case([9, 4, 7], 8, 32, torch.float32)
    cu = gpu.to(BiLSTM.from_lstm(lstm))
    with gpu():
        want = cu(gpu.to(packed.data), packed.batch_sizes)
        got = gpu.to(BiLSTM.from_lstm(lstm)).to(half)(gpu.to(packed.data).to(half), packed.batch_sizes)
    torch.testing.assert_close(got.float(), want, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_cuda_half_inputs_keep_gates_and_cells_in_float32(half, gpu):
    lstm, ours, packed = make_case([6, 3, 5], 4, 8, torch.float32)
    weights = [gpu.to(getattr(ours, name).detach()).to(half) for name in ("weight_ih", "weight_hh", "bias")]
    with gpu():
        output, gates, cells = torch.ops.ebm_ext.bilstm(gpu.to(packed.data).to(half), packed.batch_sizes, *weights)
    assert output.dtype == half and gates.dtype == torch.float32 and cells.dtype == torch.float32
    # against float32 on the CPU from the same half-rounded inputs
    want = torch.ops.ebm_ext.bilstm(packed.data.to(half).float(), packed.batch_sizes,
                                    *(w.cpu().float() for w in weights))
    torch.testing.assert_close(cells.cpu(), want[2], atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(output.float().cpu(), want[0], atol=1e-2, rtol=1e-2)


def test_cuda_recurrence_launches_do_not_grow_with_length(gpu):
    """Forward and backward each walk every step in one launch: 3 steps or 12 launch the same
    kernels (on a GPU the count includes ATen's GEMMs and copies, which do not grow either)."""
    def launches(T):
        lstm, ours, packed = make_case([T, T - 1, 2], 5, 6, torch.float32)
        weights = [gpu.to(getattr(ours, n).detach()) for n in ("weight_ih", "weight_hh", "bias")]
        x = gpu.to(packed.data)
        forward = gpu.ops.bilstm(x, packed.batch_sizes, *weights)
        grad = torch.ones_like(forward[0])
        counts = []
        for call in (lambda: gpu.ops.bilstm(x, packed.batch_sizes, *weights),
                     lambda: gpu.ops._bilstm_backward(grad, x, packed.batch_sizes, *weights[:2],
                                                      *forward)):
            call()
            counts.append(gpu.launches(call)[0])
        return counts

    short, long = launches(3), launches(12)
    assert short == long, (short, long)
    if gpu.name == "emulated":
        assert short == [1, 1]  # the emulation counts our kernels only
