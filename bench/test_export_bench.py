"""Tagging throughput of the main job's tagger (an ensemble of five: character CNN and BiLSTM
members in turn, the default network) run three ways: eager PyTorch (TaggerEnsemble.predict),
torch.export's program, and the AOTInductor package (tagger.py export); on encoded tweets of
oct27 test, and from raw text as `tagger.py tag` streams it (read, tokenise, encode, tag,
write). Throughput does not depend on the weights, so the members are untrained."""
import dataclasses
import io

import pytest
import torch

from ebm_ext.tagging import ExportedTagger, TaggerConfig, TaggerEnsemble, build_tagger, data as D
from ebm_ext.tagging.export import aoti_available, export_tagger
from ebm_ext.tagging.stream import tag_stream
from ebm_ext.tagging.data import data_dir

DATA = data_dir() / "twpos"
MEMBERS = 5


@pytest.fixture(scope="module")
def taggers(tmp_path_factory):
    train = D.read_tweets(DATA / "oct27.train")
    tags, categories = D.read_tagset(DATA / "tagset.tsv")
    vocabs = D.Vocabularies.build(train, tags)
    torch.manual_seed(0)
    config = TaggerConfig(categories=categories)
    members = [build_tagger(dataclasses.replace(config, seed=1 + k,
                                                char_model=("cnn", "lstm")[k % 2]), vocabs)
               for k in range(MEMBERS)]
    eager = TaggerEnsemble(members).eval()
    folder = tmp_path_factory.mktemp("export")
    programs = {"ebm_ext eager": eager.predict}
    for kind, aoti in (("torch.export", False), ("AOTInductor", True)):
        if aoti and not aoti_available():
            continue
        path = folder / f"{'aoti' if aoti else 'export'}.pt2"
        export_tagger(eager, vocabs, path, aoti=aoti)
        programs[kind] = ExportedTagger.load(path).predict
    test = D.read_tweets(DATA / "oct27.test")
    batches = {1: D.encode(test[:1], vocabs, with_tags=False),
               256: D.encode(test[:256], vocabs, with_tags=False)}
    raw = "".join(" ".join(tokens) + "\n" for tokens, _ in test).encode()
    return programs, batches, vocabs, raw


@pytest.mark.parametrize("size", [1, 256])
@pytest.mark.parametrize("impl", ["ebm_ext eager", "torch.export", "AOTInductor"])
def test_tag_throughput(benchmark, taggers, impl, size):
    programs, batches, _, _ = taggers
    if impl not in programs:
        pytest.skip("AOTInductor needs a C++ compiler")
    benchmark.group = f"tagging {size} tweet{'s' if size > 1 else ''} (ensemble of {MEMBERS})"
    predict, batch = programs[impl], batches[size]
    with torch.no_grad():
        expected = programs["ebm_ext eager"](batch)
        assert torch.equal(predict(batch), expected)
        benchmark(predict, batch)
    benchmark.extra_info["note"] = f"{size / benchmark.stats['median']:.0f} tweets/s"


@pytest.mark.parametrize("impl", ["ebm_ext eager", "torch.export", "AOTInductor"])
def test_tag_stream_throughput(benchmark, taggers, impl):
    """Raw lines in, tagged blocks out, as `tagger.py tag --checkpoint/--model` runs them."""
    programs, _, vocabs, raw = taggers
    if impl not in programs:
        pytest.skip("AOTInductor needs a C++ compiler")
    lines = raw.count(b"\n")
    benchmark.group = f"tagging {lines} raw tweets from text, streamed (ensemble of {MEMBERS})"

    def run(predict):
        out = io.StringIO()
        tag_stream(predict, vocabs, io.BytesIO(raw), out)
        return out.getvalue()

    assert run(programs[impl]) == run(programs["ebm_ext eager"])
    benchmark(run, programs[impl])
    benchmark.extra_info["note"] = f"{lines / benchmark.stats['median']:.0f} tweets/s"
