"""One training epoch of the tweet tagger as tagger.py trains it (the same feature network,
batch 8, fused Adam) plus decoding of the dev set, with the chain layer from ebm_ext (CRF NLL,
Viterbi) and from pytorch-crf (its CRF layer and decode)."""

import pytest
import torch

from ebm_ext.tagging import data as D
from ebm_ext import losses
from ebm_ext.nn import ChainEnergy
from ebm_ext.tagging import FeatureNetwork
from ebm_ext.tagging.data import data_dir

DATA = data_dir() / "twpos"
BATCH = 8  # tagger.py's default


@pytest.fixture(scope="module")
def corpus():
    train = D.read_tweets(DATA / "oct27.train")
    dev = D.read_tweets(DATA / "oct27.dev")
    tags, _ = D.read_tagset(DATA / "tagset.tsv")
    vocabs = D.Vocabularies.build(train, tags)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train), generator=g).tolist()
    train_batches = [D.encode([train[i] for i in order[s:s + BATCH]], vocabs)
                     for s in range(0, len(train), BATCH)]
    dev_batches = [D.encode(dev[s:s + 256], vocabs) for s in range(0, len(dev), 256)]
    return vocabs, train_batches, dev_batches


def _epoch(features, layer, loss_fn, decode_fn, train_batches, dev_batches):
    params = list(features.parameters()) + list(layer.parameters())
    opt = torch.optim.Adam(params, lr=3e-3, fused=True)
    features.train()
    for batch in train_batches:
        loss = loss_fn(features(batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    features.eval()
    with torch.no_grad():
        return [decode_fn(features(batch), batch) for batch in dev_batches]


@pytest.mark.parametrize("impl", ["ebm_ext", "pytorch-crf"])
def test_tagger_epoch(benchmark, corpus, impl):
    vocabs, train_batches, dev_batches = corpus
    benchmark.group = "tweet tagger epoch (train + dev decode)"
    K = len(vocabs.tags)
    torch.manual_seed(0)
    features = FeatureNetwork(len(vocabs.words), len(vocabs.chars), K,
                              num_suffixes=len(vocabs.suffixes), num_prefixes=len(vocabs.prefixes))
    if impl == "ebm_ext":
        layer = ChainEnergy(K)

        def loss_fn(unary, b):
            return losses.crf_nll(unary, layer.trans, b.tags, b.lengths, layer.start, layer.end)

        def decode_fn(unary, b):
            return layer.decode(unary, b.lengths)
    else:
        from torchcrf import CRF
        layer = CRF(K, batch_first=True)

        def mask(b):
            return torch.arange(b.words.shape[1]) < b.lengths[:, None]

        def loss_fn(unary, b):
            return -layer(-unary, b.tags.clamp(min=0), mask(b), reduction="mean")

        def decode_fn(unary, b):
            return layer.decode(-unary, mask(b))
    benchmark.pedantic(_epoch, args=(features, layer, loss_fn, decode_fn, train_batches,
                                     dev_batches), rounds=3, iterations=1, warmup_rounds=1)
