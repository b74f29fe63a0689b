"""The training layer end to end on small slices of the tweet corpus: it learns (well above the
majority tag), resuming equals an uninterrupted run, eval/tag commands, pictures, and DDP with
two processes."""
import json
import os
import pathlib
import subprocess
import sys
import threading

import pytest
import torch

from chain_cases import DATA

REPO = pathlib.Path(__file__).resolve().parents[1]
TAGGER = REPO / "python" / "tagger.py"
SMALL = ["--corpus", "twpos", "--limit", "200", "--batch-size", "8", "--hidden", "32",
         "--word-dim", "32", "--no-progress", "--threads", "1", "--data-dir", str(DATA)]


def run(*args, check=True, **kwargs):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, str(TAGGER), *map(str, args)], capture_output=True,
                         text=True, env=env, **kwargs)
    if check and out.returncode != 0:
        raise AssertionError(f"tagger failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def params(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("margin")
    run("train", *SMALL, "--criterion", "margin_rescaled_category", "--epochs", "6", "--out", out)
    return out


def test_learns_well_above_the_majority_tag(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    # The most frequent tag (V) covers ~15% of the tokens; 6 short epochs on 200 tweets reach
    # far beyond.
    assert metrics["test_acc"] > 0.5
    losses = [h["train_loss"] for h in metrics["history"]]
    assert losses[-1] < losses[0]
    for picture in ("curves.png", "confusion.png"):
        assert (trained / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_and_tag_commands(trained, tmp_path):
    out = run("eval", "--checkpoint", trained / "best.pt", "--file", DATA / "twpos" / "oct27.dev")
    assert "token accuracy" in out.stdout
    out = run("eval", "--checkpoint", trained / "best.pt", "--file",
              DATA / "ud_ewt" / "en_ewt-ud-dev.conllu", check=False)
    assert out.returncode != 0 and "unknown tag" in out.stderr  # UPOS tags are not tweet tags
    raw = tmp_path / "raw.txt"
    raw.write_text("lol @bob this is gr8!!\n\nhttp://t.co/x #win\n \t \r\nok", encoding="utf-8")
    out = run("tag", "--checkpoint", trained / "best.pt", "--input", raw)
    blocks = tag_blocks(out.stdout)
    # One block per input line, in order: the empty and the whitespace-only lines get empty ones.
    assert [[token for token, _ in b] for b in blocks] == [
        ["lol", "@bob", "this", "is", "gr8", "!!"], [], ["http://t.co/x", "#win"], [], ["ok"]]
    out = run("tag", "--checkpoint", trained / "best.pt", "--input", raw, "--pretokenized")
    assert [token for token, _ in tag_blocks(out.stdout)[0]] == ["lol", "@bob", "this", "is", "gr8!!"]
    out = run("tag", "--checkpoint", trained / "best.pt", input="ok then\n")
    assert len(tag_blocks(out.stdout)) == 1 and len(tag_blocks(out.stdout)[0]) == 2
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"fine\n\x9f\x92\x96 binary\n")
    out = run("tag", "--checkpoint", trained / "best.pt", "--input", binary, check=False)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        f"tagger.py tag: error: {binary}:2: not UTF-8 text (invalid start byte at byte 0 of the "
        "line)"]


def tag_blocks(stdout: str) -> list:
    """tag's output as one list of (token, tag) per block; every block ends with a blank line."""
    assert stdout.endswith("\n") or not stdout
    blocks, block = [], []
    for line in stdout.splitlines():
        if line:
            block.append(tuple(line.split("\t")))
        else:
            blocks.append(block)
            block = []
    assert not block, "the last block has no closing blank line"
    return blocks


STREAM_WORDS = "lol @bob this is gr8 !! #win ok then :) http://t.co/x i love it so much".split()


def _stream_line(i: int) -> str:
    """Input line i of the streaming test: 4 to 6 tokens, every 7th line empty."""
    if i % 7 == 3:
        return ""
    return " ".join(STREAM_WORDS[(i + k) % len(STREAM_WORDS)] for k in range(4 + i % 3))


def _peak_kib(pid: int) -> int:
    """The peak resident memory (VmHWM) of a live process, in KiB."""
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


@pytest.mark.skipif(not pathlib.Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_tag_streams_every_line_in_bounded_memory(trained):
    """200,192 lines through a pipe: the tags of the first 20,480 come back while the rest is
    still unwritten (tag streams), one block per line in order (an empty block for each empty
    line), and the peak memory after all of them is that after the first 20,480."""
    batch = 256  # tag's batch: it tags a batch once it is full (or the input ends)
    n, first = 782 * batch, 80 * batch
    proc = subprocess.Popen([sys.executable, str(TAGGER), "tag", "--checkpoint", trained / "best.pt"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    came_back = {first: threading.Event(), n: threading.Event()}
    seen = {"blocks": 0, "wrong": None}

    def reader():  # checks each block against its line as it comes
        block = []
        for raw in proc.stdout:
            line = raw.decode().rstrip("\n")
            if line:
                block.append(line.split("\t")[0])
                continue
            i = seen["blocks"]
            if seen["wrong"] is None and block != _stream_line(i).split():
                seen["wrong"] = (i, block)
            seen["blocks"], block = i + 1, []
            if i + 1 in came_back:
                came_back[i + 1].set()

    def write(lo, hi):
        proc.stdin.write("".join(_stream_line(i) + "\n" for i in range(lo, hi)).encode())
        proc.stdin.flush()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        write(0, first)
        assert came_back[first].wait(240), "no tags before the input ended: tag does not stream"
        peak_first = _peak_kib(proc.pid)
        write(first, n)  # the reader drains stdout meanwhile
        assert came_back[n].wait(600), f"only {seen['blocks']} of {n} blocks came back"
        peak_all = _peak_kib(proc.pid)
        proc.stdin.close()
        assert proc.wait(60) == 0, proc.stderr.read().decode()
    finally:
        proc.kill()
    thread.join(10)
    assert seen["blocks"] == n and seen["wrong"] is None, seen
    # Holding 200,000 tokenised lines would cost some 100 MB; a stream holds one batch.
    assert peak_all - peak_first < 20 * 1024, (peak_first, peak_all)


def test_a_missing_corpus_says_where_the_data_are_looked_for(tmp_path):
    """No corpus under the data folder: one line naming the missing file, --data-dir,
    $EBM_DATA and ../shared/data, and what the corpora are; exit status 2, no traceback."""
    out = run("train", "--corpus", "twpos", "--out", tmp_path / "run", "--data-dir",
              tmp_path / "nothing", check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    line = out.stderr.strip()
    assert "\n" not in line and f"{tmp_path / 'nothing' / 'twpos' / 'oct27.train'}: no such corpus file" in line
    for named in ("--data-dir", "$EBM_DATA", "../shared/data", "tweet POS corpus", "UD English EWT"):
        assert named in line, named


def test_bad_files_and_checkpoints_fail_in_one_line(trained, tmp_path):
    """Each bad input ends the command with a non-zero exit and one line on stderr naming the
    file and what is wrong: no traceback, no '0.00% over 0 tokens'."""
    best = trained / "best.pt"
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.txt").write_bytes(b"ok\tN\n\xff\xfe\x00\x81binary\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "truncated.pt").write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    (tmp_path / "random.pt").write_bytes(os.urandom(4096))
    torch.save({"model": {}}, tmp_path / "structure.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    torch.save({"model": print}, tmp_path / "pickled.pt")  # a pickle naming a callable
    dev = DATA / "twpos" / "oct27.dev"
    cases = [(best, tmp_path / "empty.txt", "holds no sentences"),
             (best, tmp_path / "binary.txt", "binary.txt:2: not UTF-8 text"),
             (tmp_path / "empty.pt", dev, "empty.pt: not a readable checkpoint"),
             (tmp_path / "truncated.pt", dev, "truncated.pt: not a readable checkpoint"),
             (tmp_path / "random.pt", dev, "random.pt: not a readable checkpoint"),
             (tmp_path / "structure.pt", dev, "structure.pt: not a tagger checkpoint"),
             (tmp_path / "list.pt", dev, "list.pt: a checkpoint holds a dict, got list"),
             (tmp_path / "pickled.pt", dev, "pickled.pt: refused: it names print, which a "
              "weights-only load does not import or run"),
             (tmp_path / "missing.pt", dev, "missing.pt: no such checkpoint file")]
    for checkpoint, file, message in cases:
        out = run("eval", "--checkpoint", checkpoint, "--file", file, check=False)
        assert out.returncode != 0, (message, out.stdout)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (message, out.stderr)
        # Nothing that invites loading it unsafely, and no terminal escape codes.
        assert "weights_only=False" not in out.stderr and "\x1b" not in out.stderr


def test_checkpoints_load_with_weights_only(trained):
    for name in ("best.pt", "last.pt"):
        state = torch.load(trained / name, weights_only=True)
        assert "model" in state and "vocabs" in state
    assert not list(trained.glob(".*.tmp"))  # atomic writes leave no temporary files


def interrupted(args, after: str):
    """Runs the tagger and kills it (SIGKILL) as soon as it prints a line starting with `after`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(TAGGER), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    for line in proc.stdout:
        if line.startswith(after):
            proc.kill()
            break
    proc.wait()


@pytest.mark.parametrize("options", [[], ["--schedule", "cosine", "--ema", "0.9"]],
                         ids=["constant", "cosine-ema"])
def test_resume_equals_uninterrupted(tmp_path, options):
    common = [*SMALL, "--limit", "60", "--criterion", "crf_nll", "--patience", "10",
              "--no-pictures", "--epochs", "12", *options]
    run("train", *common, "--out", tmp_path / "a")
    interrupted(["train", *common, "--out", tmp_path / "b"], after="epoch 1:")
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["epoch"] < 12
    run("train", *common, "--out", tmp_path / "b", "--resume")
    a, b = params(tmp_path / "a" / "last.pt"), params(tmp_path / "b" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ha = json.loads((tmp_path / "a" / "metrics.json").read_text())["history"]
    hb = json.loads((tmp_path / "b" / "metrics.json").read_text())["history"]
    assert [h["train_loss"] for h in ha] == [h["train_loss"] for h in hb]


def test_ensemble_decodes_with_its_members_mean_energy(tmp_path):
    run("train", *SMALL, "--limit", "60", "--criterion", "crf_nll", "--epochs", "2",
        "--ensemble", "2", "--char-model", "cnn,lstm", "--out", tmp_path)
    state = torch.load(tmp_path / "best.pt", weights_only=True)
    assert len(state["members"]) == 2
    assert [c["char_model"] for c in state["member_configs"]] == ["cnn", "lstm"]
    for k in (1, 2):  # each member is an ordinary run of its own seed
        member = torch.load(tmp_path / f"member-{k}" / "best.pt", weights_only=True)
        assert member["config"]["seed"] == k
        assert all(torch.equal(member["model"][n], state["members"][k - 1][n]) for n in member["model"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [m["config"]["seed"] for m in metrics["members"]] == [1, 2]
    assert all(0 < m["test_acc"] < 1 for m in metrics["members"]) and 0 < metrics["test_acc"] < 1
    out = run("eval", "--checkpoint", tmp_path / "best.pt", "--file", DATA / "twpos" / "oct27.dev")
    assert "token accuracy" in out.stdout
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # python/ensemble_decodings.py's Viterbi of the mean energy is what the ensemble decoded
    decoded = subprocess.run([sys.executable, str(REPO / "python" / "ensemble_decodings.py"),
                              tmp_path / "best.pt", "--limit", "60", "--data-dir", DATA],
                             capture_output=True, text=True, check=True).stdout
    lines = {line.split()[0]: line.split() for line in decoded.splitlines()}
    assert set(lines) == {"member", "viterbi", "posterior", "mixture", "log"}
    assert lines["viterbi"][-1] == f"{100 * metrics['test_acc']:.2f}"


def test_jobs_train_the_same_members_in_parallel(tmp_path):
    common = [*SMALL, "--limit", "60", "--criterion", "crf_nll", "--epochs", "2", "--no-pictures",
              "--ensemble", "3", "--char-model", "cnn,lstm"]
    run("train", *common, "--out", tmp_path / "one")
    out = run("train", *common, "--jobs", "2", "--out", tmp_path / "two")
    assert "member-3: epoch 2:" in out.stdout and "in 2 processes" in out.stdout
    for k in (1, 2, 3):  # seeded: each worker's tagger is the one trained in the parent
        a, b = (params(tmp_path / n / f"member-{k}" / "best.pt") for n in ("one", "two"))
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    one, two = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "two"))
    assert one["test_acc"] == two["test_acc"]
    assert ([[h["train_loss"] for h in m["history"]] for m in one["members"]]
            == [[h["train_loss"] for h in m["history"]] for m in two["members"]])
    assert two["jobs"] == 2 and one["jobs"] == 1
    bad = run("train", *common, "--jobs", "0", "--out", tmp_path / "bad", check=False)
    assert bad.returncode == 2 and "--jobs must be at least 1, got 0" in bad.stderr


def test_jobs_are_checked_before_any_work():
    from types import SimpleNamespace
    from training import member_jobs
    alone, torchrun = (SimpleNamespace(active=w > 1, world=w) for w in (1, 2))
    assert member_jobs(SimpleNamespace(jobs=4, ensemble=3), alone) == 3  # one per member at most
    assert member_jobs(SimpleNamespace(jobs=2, ensemble=1), torchrun) == 1
    with pytest.raises(ValueError, match=r"under torchrun \(WORLD_SIZE=2\) keep --jobs 1"):
        member_jobs(SimpleNamespace(jobs=2, ensemble=3), torchrun)
    with pytest.raises(ValueError, match="--jobs must be at least 1, got -1"):
        member_jobs(SimpleNamespace(jobs=-1, ensemble=3), alone)


def test_student_distils_its_teacher(tmp_path):
    common = [*SMALL, "--limit", "60", "--criterion", "crf_nll", "--epochs", "2", "--no-pictures"]
    run("train", *common, "--ensemble", "2", "--out", tmp_path / "teacher")
    run("train", *common, "--teacher", tmp_path / "teacher" / "best.pt", "--distill", "0.5",
        "--out", tmp_path / "student")
    run("train", *common, "--out", tmp_path / "alone")
    teacher, student = (torch.load(tmp_path / n / "best.pt", weights_only=True)
                        for n in ("teacher", "student"))
    assert student["vocabs"] == teacher["vocabs"] and "members" not in student
    assert student["config"]["teacher"].endswith("best.pt") and student["config"]["distill"] == 0.5
    # On a fixed batch, the loss the student trained with (tagger.py's Teacher: the teacher's
    # energies attached to each sentence, handed to the student's loss) is half its criterion and
    # half the exact KL(teacher || student), here computed by torch-struct from the same energies.
    torch_struct = pytest.importorskip("torch_struct")
    from training import Teacher
    from ebm_ext.tagging import load_tagger
    from ebm_ext.tagging import data as D
    model, vocabs = load_tagger(tmp_path / "student" / "best.pt")
    teacher = Teacher(tmp_path / "teacher" / "best.pt", "cpu", 0.5)
    sentences = [s for s in D.read_tweets(DATA / "twpos" / "oct27.train") if len(s[0]) >= 2][:8]
    encoded = [D.encode_sentence(s, vocabs) for s in sentences]
    model.eval()  # no dropout: the same numbers twice
    with torch.no_grad():
        got = teacher.loss(model, teacher.attach(encoded, "cpu"), "cpu")
        batch = D.collate(encoded)
        criterion = model.loss(batch)
        lengths = batch.lengths

        def crf(unary, trans, start, end):  # energies -> torch-struct's scores phi[b, n, to, from]
            unary, trans, start, end = (x.double() for x in (unary, trans, start, end))
            phi = -(trans.T[None, None] + unary[:, 1:, :, None])
            phi[:, 0] -= (start + unary[:, 0])[:, None, :]
            for b, n in enumerate(lengths.tolist()):
                phi[b, n - 2] -= end[:, None]
            return torch_struct.LinearChainCRF(phi, lengths=lengths)

        kl = crf(*teacher.model.energies(batch)).kl(crf(*model.energies(batch)))
    assert float(kl.min()) > 1e-4  # two different taggers: the KL term is not a bystander
    assert got.item() == pytest.approx(0.5 * criterion.item() + 0.5 * kl.mean().item(), rel=1e-5)
    out = run("train", *common, "--criterion", "token_nll", "--teacher",
              tmp_path / "teacher" / "best.pt", "--out", tmp_path / "local", check=False)
    assert out.returncode != 0 and "distillation needs a chain criterion" in out.stderr


def test_pretraining_runs_before_tagging_and_changes_the_start(tmp_path):
    common = [*SMALL, "--limit", "40", "--criterion", "crf_nll", "--epochs", "1", "--no-pictures"]
    out = run("train", *common, "--pretrain", "6", "--out", tmp_path / "pre")
    losses = [float(line.split()[-1]) for line in out.stdout.splitlines()
              if line.startswith("pretrain ")]
    assert len(losses) == 6 and losses[-1] < losses[0]  # the masked-word loss falls
    run("train", *common, "--out", tmp_path / "plain")
    pre, plain = (params(tmp_path / n / "best.pt") for n in ("pre", "plain"))
    assert pre.keys() == plain.keys()  # the word head is not part of the tagger
    assert not torch.equal(pre["features.words.weight"], plain["features.words.weight"])


def test_margin_picture(tmp_path):
    """The picture is a real drawing: a PNG of the expected size, with ink on it (more than one
    colour, most pixels the white background)."""
    matplotlib_image = pytest.importorskip("matplotlib.image")
    run("margin-picture", "--out", tmp_path / "margin.png")
    assert (tmp_path / "margin.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = torch.from_numpy(matplotlib_image.imread(tmp_path / "margin.png"))
    height, width = pixels.shape[:2]
    # plots.py draws it 6 x 4 inches at 120 dpi (720 x 480), trimmed to its content.
    assert 0.8 * 720 <= width <= 1.05 * 720 and 0.8 * 480 <= height <= 1.05 * 480, (width, height)
    rgb = pixels[..., :3].reshape(-1, 3)
    colours = torch.unique((rgb * 255).round().to(torch.uint8), dim=0)
    white = (rgb > 0.99).all(-1).float().mean().item()
    assert len(colours) > 10 and 0.5 < white < 0.995, (len(colours), white)


def test_ddp_two_processes_stay_in_sync(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(TAGGER), "train", *SMALL, "--limit", "96",
           "--criterion", "margin", "--epochs", "3", "--no-pictures", "--out", tmp_path]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["processes"] == 2
    assert metrics["rank_param_max_diff"] == 0.0
    losses = [h["train_loss"] for h in metrics["history"]]
    assert losses[-1] < losses[0]


def test_protocols_select_the_splits():
    from corpora import protocol_splits
    train, dev, test = ([(["w"], [name])] * n for name, n in (("train", 3), ("dev", 2), ("test", 1)))
    assert protocol_splits((train, dev, test), "standard") == (train, dev, test)
    assert protocol_splits((train, dev, test), "train+dev") == (train + dev, test, test)
    assert protocol_splits((train, dev, test), "all") == (train + dev + test, [], test)
    with pytest.raises(ValueError, match="protocol must be"):
        protocol_splits((train, dev, test), "dev")


@pytest.mark.parametrize("protocol", ["train+dev", "all"])
def test_protocol_runs(tmp_path, protocol):
    out = run("train", *SMALL, "--limit", "40", "--criterion", "crf_nll", "--epochs", "2",
              "--no-pictures", "--protocol", protocol, "--out", tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["protocol"] == protocol
    if protocol == "train+dev":  # the epoch is selected on test
        assert metrics["dev_acc"] == metrics["test_acc"]
        assert "selected on test" in out.stdout
    else:  # nothing to select on: every epoch runs and the last one is kept
        assert metrics["dev_acc"] is None and metrics["best_epoch"] == 2
        assert [h["dev_acc"] for h in metrics["history"]] == [None, None]
        assert "test was seen" in out.stdout
