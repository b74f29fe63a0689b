"""Gradient-descent inference over relaxed tags: the fused chain_relaxed_inference against the
same loop through autograd (ebm_ext._reference, the relaxed energy in tensor ops), and decoding
a batch of 256 tweets with an inference network (feature network + argmax) against the same
feature network + viterbi."""

import pytest
import torch

import ebm_ext
from ebm_ext import _reference as ref
from ebm_ext.tagging import data as D
from ebm_ext.inference import InferenceNetwork
from ebm_ext.nn import ChainEnergy
from ebm_ext.tagging import FeatureNetwork
from ebm_ext.tagging.data import data_dir
from conftest import _inputs, _run

DATA = data_dir() / "twpos"


@pytest.mark.parametrize("impl", ["ebm_ext", "autograd loop"])
@pytest.mark.parametrize("method", ["entropic", "projected"])
def test_relaxed_inference_20_steps(benchmark, method, impl):
    benchmark.group = f"relaxed inference 256x50x25, 20 steps, {method}"
    unary, trans, start, end = _inputs((256, 50, 25))
    want = ebm_ext.chain_relaxed_inference(unary, trans, None, start, end, steps=20, lr=0.5, method=method)[0]
    if impl == "ebm_ext":
        fn = lambda: ebm_ext.chain_relaxed_inference(unary, trans, None, start, end, steps=20, lr=0.5, method=method)  # noqa: E731
    else:
        fn = lambda: ref.chain_relaxed_inference(unary, trans, None, start, end, steps=20, lr=0.5, method=method)  # noqa: E731
    torch.testing.assert_close(fn()[0], want, atol=1e-4, rtol=1e-4)
    _run(benchmark, fn, impl)


@pytest.fixture(scope="module")
def tweets():
    train = D.read_tweets(DATA / "oct27.train")
    test = D.read_tweets(DATA / "oct27.test")
    tags, _ = D.read_tagset(DATA / "tagset.tsv")
    vocabs = D.Vocabularies.build(train, tags)
    return vocabs, D.encode(test[:256], vocabs)


@pytest.mark.parametrize("impl", ["ebm_ext viterbi", "inference network"])
def test_decode_256_tweets(benchmark, tweets, impl):
    """Same network size either way (the inference network is a copy of the feature network)."""
    vocabs, batch = tweets
    benchmark.group = "decode 256 tweets (network + decoding)"
    K = len(vocabs.tags)
    torch.manual_seed(0)
    features = FeatureNetwork(len(vocabs.words), len(vocabs.chars), K, num_suffixes=len(vocabs.suffixes),
                              num_prefixes=len(vocabs.prefixes)).eval()
    chain = ChainEnergy(K)
    net = InferenceNetwork(features).eval()
    if impl == "ebm_ext viterbi":
        fn = lambda: chain.decode(features(batch), batch.lengths)  # noqa: E731
    else:
        fn = lambda: net.decode(batch)  # noqa: E731
    with torch.no_grad():
        benchmark(fn)
