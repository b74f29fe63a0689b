"""ebm_ext.inference: gradient inference through autograd (against the fused kernel), the tag
language-model energy, inference networks; python/inference_network.py end to end on a slice."""
import json
import pathlib

import pytest
import torch

import ebm_ext
from ebm_ext.inference import InferenceNetwork, TagLanguageModel, chain_plus_tag_lm, gradient_inference
from chain_cases import DATA, make_chain
from test_tagger import SMALL, run

REPO = pathlib.Path(__file__).resolve().parents[1]
import inference_network


def _mask(T, L, dtype=torch.float64):
    return (torch.arange(T)[None, :] < L[:, None])[..., None].to(dtype)


@pytest.mark.parametrize("method", ["entropic", "projected"])
def test_gradient_inference_on_the_chain_is_the_fused_kernel(method):
    unary, trans, L, start, end = make_chain(6, 8, 5, seed=1)
    energy = lambda y: ebm_ext.chain_energy(unary, trans, y, L, start, end)  # noqa: E731
    y, e, steps = gradient_inference(energy, torch.full_like(unary, 0.2), steps=30, lr=0.3, method=method,
                                     mask=_mask(8, L))
    want_y, want_e = ebm_ext.chain_relaxed_inference(unary, trans, L, start, end, steps=30, lr=0.3, method=method)
    torch.testing.assert_close(y, want_y)
    torch.testing.assert_close(e, want_e)
    assert (steps == 30).all()


def test_momentum_tolerance_and_entropy():
    unary, trans, L, start, end = make_chain(16, 6, 4, seed=2, lengths=False)
    energy = lambda y: ebm_ext.chain_energy(unary, trans, y, None, start, end)  # noqa: E731
    y0 = torch.full_like(unary, 0.25)
    plain = gradient_inference(energy, y0, steps=15, lr=0.05)[1]
    heavy = gradient_inference(energy, y0, steps=15, lr=0.05, momentum=0.8)[1]
    assert heavy.mean() < plain.mean()  # momentum goes further in the same number of steps
    y, _, steps = gradient_inference(energy, y0, steps=500, lr=0.5, tol=1e-6)
    assert (steps < 500).any() and len(set(steps.tolist())) > 1  # samples stop on their own
    entropy = lambda y: -(y * torch.log(y.clamp_min(1e-30))).sum((1, 2))  # noqa: E731
    sharp = gradient_inference(energy, y0, steps=200, lr=0.05)[0]
    smooth = gradient_inference(energy, y0, steps=200, lr=0.05, entropy=2.0)[0]
    assert (entropy(smooth) > entropy(sharp) + 0.1).all()  # the smoothing keeps y off the vertices


@pytest.mark.parametrize("kwargs,message", [
    ({"method": "sgd"}, "method must be 'entropic' or 'projected', got 'sgd'"),
    ({"lr": 0.0}, "need steps >= 0, lr > 0"),
    ({"momentum": 1.0}, "0 <= momentum < 1"),
])
def test_gradient_inference_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gradient_inference(lambda y: y.sum((1, 2)), torch.full((1, 2, 3), 1 / 3), **kwargs)


def test_tag_lm_energy_is_the_sequence_nll_on_one_hot_tags():
    torch.manual_seed(0)
    lm = TagLanguageModel(5, dim=4, hidden=6).double()
    tags = torch.tensor([[1, 4, 2, 0], [3, 3, -1, -1]])
    L = torch.tensor([4, 2])
    one_hot = torch.nn.functional.one_hot(tags.clamp_min(0), 5).double()
    energy = lm(one_hot, L)
    want = []
    for b in range(2):  # the chain rule of probability, one prefix at a time
        nll = 0.0
        for t in range(int(L[b])):
            prefix = one_hot[b:b + 1, :t + 1]
            log_p = torch.log_softmax(lm.out(lm.lstm(torch.cat([lm.begin.view(1, 1, -1), lm.embed(prefix[:, :-1])], 1))[0]), -1)
            nll = nll - log_p[0, t, tags[b, t]]
        want.append(nll)
    torch.testing.assert_close(energy, torch.stack(want))
    assert lm.nll(tags, L).item() == pytest.approx(energy.mean().item())


def test_chain_plus_tag_lm():
    unary, trans, L, start, end = make_chain(3, 5, 4, seed=3)
    lm = TagLanguageModel(4).double()
    y = torch.softmax(unary, -1)
    torch.testing.assert_close(chain_plus_tag_lm(unary, trans, L, start, end, lm, 0.0)(y),
                               ebm_ext.chain_energy(unary, trans, y, L, start, end))
    torch.testing.assert_close(chain_plus_tag_lm(unary, trans, L, start, end, lm, 2.0)(y),
                               ebm_ext.chain_energy(unary, trans, y, L, start, end) + 2 * lm(y, L))


def test_inference_network_outputs_distributions_and_decodes_their_argmax():
    class Scores(torch.nn.Module):
        def forward(self, batch):
            return batch.unary
    batch = type("B", (), {})()
    batch.unary = torch.randn(3, 4, 5)
    batch.lengths = torch.tensor([4, 2, 0])
    net = InferenceNetwork(Scores())
    y = net(batch)
    torch.testing.assert_close(y.sum(-1), torch.ones(3, 4))
    tags = net.decode(batch)
    assert torch.equal(tags[0], y[0].argmax(-1)) and (tags[1, 2:] == -1).all() and (tags[2] == -1).all()


def test_analyse_and_joint_commands(tmp_path):
    energy = tmp_path / "energy"
    run("train", *SMALL, "--criterion", "crf_nll", "--epochs", "3", "--out", energy)
    common = ["--limit", "120", "--no-progress", "--data-dir", str(DATA)]
    metrics = inference_network.main(["analyse", "--checkpoint", str(energy / "best.pt"), "--out", str(tmp_path / "a"),
                                      "--epochs", "2", "--tag-lm-epochs", "2", *common])
    r = metrics["relaxed"]["entropic"]
    assert 0 < r["viterbi_acc"] <= 1 and 0 <= r["rounding_is_viterbi"] <= 1
    assert metrics["inference_network"]["test_acc"] > 0.2
    joint = inference_network.main(["joint", "--out", str(tmp_path / "j"), "--epochs", "2", "--hidden", "16", *common])
    assert 0 <= joint["inference_network_test_acc"] <= 1
    assert json.loads((tmp_path / "j" / "metrics.json").read_text())["history"][-1]["epoch"] == 2


def test_joint_resumes_exactly(tmp_path):
    """Killed (SIGKILL) after its first joint epoch and resumed, the joint training ends as an
    uninterrupted run does: the same history, the same test accuracies."""
    import os
    import subprocess
    import sys
    script = REPO / "python" / "inference_network.py"
    common = ["joint", "--limit", "60", "--no-progress", "--data-dir", str(DATA), "--epochs", "3",
              "--hidden", "16", "--pretrain-epochs", "2", "--threads", "1"]
    whole = inference_network.main([*common, "--out", str(tmp_path / "a")])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(script), *common, "--out", str(tmp_path / "b")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    for line in proc.stdout:
        if line.startswith("joint epoch 1:"):
            proc.kill()
            break
    proc.wait()
    assert not (tmp_path / "b" / "metrics.json").exists()
    out = subprocess.run([sys.executable, str(script), *common, "--out", str(tmp_path / "b"),
                          "--resume"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    # it went on from epoch 2 (a run that started over would print epoch 1 again)
    assert "joint epoch 1:" not in out.stdout and "joint epoch 2:" in out.stdout
    resumed = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert resumed["history"] == whole["history"]
    assert resumed["viterbi_test_acc"] == whole["viterbi_test_acc"]
    assert resumed["inference_network_test_acc"] == whole["inference_network_test_acc"]
