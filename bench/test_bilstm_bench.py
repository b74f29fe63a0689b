"""The BiLSTM of the feature network, forward + backward, through ebm_ext.bilstm (fused, its own
backward kernel) and through nn.LSTM(bidirectional=True) on the same PackedSequence and
weights: an epoch's worth of tweet batches (the lengths of oct27.train in batches of 16), and
one larger padded batch."""

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from ebm_ext.tagging import data as D
from ebm_ext.nn import BiLSTM
from ebm_ext.tagging.data import data_dir
from conftest import _run

DATA = data_dir() / "twpos"
INPUT, HIDDEN = 270, 150  # the tagger's: 100 word + 2 x 30 affix + 10 shape + 100 characters


def _packed_batches(lengths_per_batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for lengths in lengths_per_batch:
        x = torch.randn(len(lengths), int(lengths.max()), INPUT, generator=g)
        out.append(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    return out


@pytest.fixture(scope="module")
def tweet_batches():
    train = D.read_tweets(DATA / "oct27.train")
    lengths = [torch.tensor([len(t) for t, _ in train[s:s + 16]]) for s in range(0, len(train), 16)]
    return _packed_batches(lengths)


@pytest.fixture(scope="module")
def large_batch():
    g = torch.Generator().manual_seed(1)
    return _packed_batches([torch.randint(10, 51, (64,), generator=g)])


def _epoch_fn(impl, batches):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(INPUT, HIDDEN, batch_first=True, bidirectional=True)
    ours = BiLSTM.from_lstm(lstm)

    def ref_step(p):
        data = p.data.requires_grad_()
        out, _ = lstm(PackedSequence(data, p.batch_sizes, p.sorted_indices, p.unsorted_indices))
        out.data.sum().backward()
        return out.data

    def our_step(p):
        out = ours(p.data.requires_grad_(), p.batch_sizes)
        out.sum().backward()
        return out

    step = our_step if impl == "ebm_ext" else ref_step
    torch.testing.assert_close(our_step(batches[0]), ref_step(batches[0]), atol=1e-5, rtol=1e-5)
    return lambda: [step(p) for p in batches]


@pytest.mark.parametrize("impl", ["ebm_ext", "nn.LSTM"])
def test_bilstm_tweet_epoch(benchmark, tweet_batches, impl):
    benchmark.group = f"BiLSTM fwd+bwd, oct27.train in batches of 16, I={INPUT}, H={HIDDEN}"
    _run(benchmark, _epoch_fn(impl, tweet_batches), impl)


@pytest.mark.parametrize("impl", ["ebm_ext", "nn.LSTM"])
def test_bilstm_large_batch(benchmark, large_batch, impl):
    benchmark.group = f"BiLSTM fwd+bwd, 64 sequences of 10-50, I={INPUT}, H={HIDDEN}"
    _run(benchmark, _epoch_fn(impl, large_batch), impl)
