"""The exported tagger (tagger.py export, ebm_ext.tagging.export): an AOTInductor package and a
torch.export program of a trained ensemble give exactly the eager tags, in a fresh process that
imports only torch and ebm_ext; bad files fail with the file's name."""
import json
import subprocess
import sys

import pytest
import torch

from chain_cases import DATA
from ebm_ext.tagging import ExportedTagger, data as D, tagger_from_state
from ebm_ext.tagging.export import aoti_available
from test_tagger import SMALL, run

# A fresh interpreter: the loader must not need the training programs (python/).
FRESH = r"""
import json, sys
import torch, ebm_ext
from ebm_ext.tagging import ExportedTagger
tagger = ExportedTagger.load(sys.argv[1])
sentences = json.loads(open(sys.argv[2], encoding="utf-8").read())
print(json.dumps({"kind": tagger.kind, "tags": tagger.tag(sentences, batch_size=int(sys.argv[3])),
                  "programs": sorted(m for m in ("tagger", "corpora", "loop", "plots")
                                     if m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """A two-member ensemble (a character CNN and a character BiLSTM member)."""
    out = tmp_path_factory.mktemp("ensemble")
    run("train", *SMALL, "--limit", "60", "--criterion", "margin_rescaled_category",
        "--epochs", "2", "--ensemble", "2", "--char-model", "cnn,lstm", "--no-pictures",
        "--out", out)
    return out


def sentences():
    dev = [tokens for tokens, _ in D.read_tweets(DATA / "twpos" / "oct27.dev")[:120]]
    # one token, a word past the encoding's 20-character cap, unknown characters, empty
    return dev + [["ok"], ["a" * 35, "#" + "b" * 30, "!!"], ["ʕ•ᴥ•ʔ", "☃"], []]


def eager_tags(checkpoint, items):
    model, vocabs = tagger_from_state(torch.load(checkpoint, weights_only=True))
    out = []
    for tokens in items:
        if not tokens:
            out.append([])
            continue
        tags = model.predict(D.encode([(tokens, None)], vocabs, with_tags=False))
        out.append([vocabs.tags.items[t] for t in tags[0].tolist()])
    return out


@pytest.mark.parametrize("kind", ["aoti", "export"])
def test_exported_tags_equal_eager_in_a_fresh_process(ensemble, tmp_path, kind):
    if kind == "aoti" and not aoti_available():
        pytest.skip("AOTInductor needs a C++ compiler")
    program = tmp_path / "tagger.pt2"
    run("export", "--checkpoint", ensemble / "best.pt", "--out", program,
        *(["--no-aoti"] if kind == "export" else []))
    meta = json.loads((tmp_path / "tagger.json").read_text())
    assert meta["program"] == kind and meta["vocabularies"]["tags"][0] == "N"
    items = sentences()
    (tmp_path / "sentences.json").write_text(json.dumps(items), encoding="utf-8")
    expected = eager_tags(ensemble / "best.pt", items)
    for batch_size in (256, 1):  # one batch of every length, and batches of one sentence
        out = subprocess.run([sys.executable, "-c", FRESH, str(program),
                              str(tmp_path / "sentences.json"), str(batch_size)],
                             capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["kind"] == kind and result["programs"] == []
        assert result["tags"] == expected
    # and the command line: tag --model prints what tag --checkpoint prints
    raw = tmp_path / "raw.txt"
    raw.write_text("lol @bob gr8!! http://t.co/x :)\nI'm at Starbucks (@ Seattle)\n",
                   encoding="utf-8")
    by_model = run("tag", "--model", program, "--input", raw).stdout
    assert by_model == run("tag", "--checkpoint", ensemble / "best.pt", "--input", raw).stdout
    assert by_model.splitlines()[3].startswith("!!\t")


def test_bad_exported_files_fail_with_the_file_named(ensemble, tmp_path):
    missing = tmp_path / "none.pt2"
    with pytest.raises(ValueError, match="none.pt2: no such file"):
        ExportedTagger.load(missing)
    program = tmp_path / "x.pt2"
    program.write_bytes(b"not a program")
    with pytest.raises(ValueError, match=r"x.json: no such file"):
        ExportedTagger.load(program)
    (tmp_path / "x.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match=r"x.json: expected an exported tagger of format"):
        ExportedTagger.load(program)
    out = run("export", "--checkpoint", ensemble / "best.pt", "--out", tmp_path / "y.zip",
              check=False)
    assert out.returncode == 2 and "must end in .pt2" in out.stderr
    out = run("tag", "--model", missing, check=False, input="ok\n")
    assert out.returncode == 2 and "none.pt2: no such file" in out.stderr
    out = run("tag", "--model", missing, "--device", "cuda", check=False, input="ok\n")
    assert out.returncode == 2 and "runs on the CPU" in out.stderr and "--device cuda" in out.stderr
