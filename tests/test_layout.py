"""The house's shape: the library never imports the tagger application (ebm_ext.tagging) or the
programs in python/, and the tagger's options live in one place (TaggerConfig)."""
import argparse
import ast
import dataclasses
import inspect
import pathlib
import subprocess
import sys

import ebm_ext
from ebm_ext.losses import CRITERIA, Criterion
from ebm_ext.tagging import FeatureNetwork, TaggerConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORE = [p for p in (ROOT / "ebm_ext").rglob("*.py") if "tagging" not in p.parts]
# Every module of python/ (programs and what they share): the library imports none of them.
PYTHON_MODULES = {p.stem for p in (ROOT / "python").glob("*.py")}


def _imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield ("." * node.level) + (node.module or "")


def test_core_modules_never_import_the_application():
    for path in CORE:
        for name in _imports(path):
            assert "tagging" not in name, f"{path.relative_to(ROOT)} imports {name}"
            assert name.split(".")[0] not in PYTHON_MODULES, \
                f"{path.relative_to(ROOT)} imports the program module {name}"


def test_the_application_never_imports_the_programs():
    for path in (ROOT / "ebm_ext" / "tagging").rglob("*.py"):
        for name in _imports(path):
            assert name.split(".")[0] not in PYTHON_MODULES, \
                f"{path.relative_to(ROOT)} imports {name}"


def test_importing_the_library_loads_no_application_module():
    code = ("import sys, ebm_ext, ebm_ext.nn, ebm_ext.cluster, ebm_ext.sparse, ebm_ext.inference, "
            "ebm_ext.distributions, ebm_ext.crf; "
            "print([m for m in sys.modules if m.startswith('ebm_ext.tagging')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_inference_networks_take_the_taggers_network_options():
    """inference_network joint offers exactly TaggerConfig's network options (network_only),
    and a config made from them keeps every other field at its default."""
    parser = argparse.ArgumentParser()
    TaggerConfig.add_arguments(parser, network_only=True)
    offered = {a.dest for a in parser._actions if a.dest != "help"}
    assert offered == set(TaggerConfig().network_kwargs())
    config = TaggerConfig.from_args(parser.parse_args(["--hidden", "16"]))
    assert config.hidden == 16 and config.criterion == TaggerConfig().criterion


def test_every_network_option_is_a_feature_network_parameter():
    params = inspect.signature(FeatureNetwork).parameters
    for name in TaggerConfig().network_kwargs():
        assert name in params, f"TaggerConfig.{name} is marked network but FeatureNetwork lacks it"


def test_the_command_line_is_generated_from_the_fields():
    parser = argparse.ArgumentParser()
    TaggerConfig.add_arguments(parser)
    cli = [f for f in dataclasses.fields(TaggerConfig) if f.metadata["cli"]]
    assert {a.dest for a in parser._actions if a.dest != "help"} == {f.name for f in cli}
    args = parser.parse_args(["--hidden", "7", "--criterion", "crf_nll", "--char-model", "cnn,lstm"])
    config = TaggerConfig.from_args(args)
    assert config.hidden == 7 and config.criterion == "crf_nll" and config.char_model == "cnn,lstm"

    @dataclasses.dataclass
    class Wider(TaggerConfig):  # one more option is one more field
        extra_width: int = dataclasses.field(default=3, metadata={"help": "x", "network": True,
                                                                   "cli": True})
    parser = argparse.ArgumentParser()
    Wider.add_arguments(parser)
    assert parser.parse_args(["--extra-width", "5"]).extra_width == 5
    assert Wider().network_kwargs()["extra_width"] == 3


def test_a_checkpoint_config_of_an_older_release_loads():
    old = {"corpus": "twpos", "criterion": "crf_nll", "word_dim": 50, "char_filters": 40,
           "hidden": 20, "dropout": 0.5, "word_dropout": 0.05, "unary_scale": 0.0,
           "unk_alpha": 0.0, "layers": 1, "char_model": "cnn", "margin": 1.0,
           "categories": ["N", "V"], "lr": 3e-3, "batch_size": 8, "seed": 1, "ema": 0.0,
           "schedule": "cosine"}
    config = TaggerConfig.from_dict(old)
    assert config.hidden == 20 and config.epochs is None
    assert config.resolved().epochs == 60 and config.resolved().patience == 20


def test_every_criterion_is_one_registry_entry():
    assert set(CRITERIA) == {"token_nll", "crf_nll", "perceptron", "margin", "margin_rescaled",
                             "margin_rescaled_category"}
    assert all(isinstance(c, Criterion) for c in CRITERIA.values())
    assert [a.dest for a in _train_parser()._actions if a.dest == "criterion"]


def _train_parser():
    parser = argparse.ArgumentParser()
    TaggerConfig.add_arguments(parser)
    return parser


def test_one_export_list():
    for name in ebm_ext.__all__:
        assert hasattr(ebm_ext, name), name
    public = {n for n in dir(ebm_ext.ops) if not n.startswith("_") and callable(getattr(ebm_ext.ops, n))}
    assert public <= set(ebm_ext.__all__) | {"annotations"}


def _programs():
    """The programs of python/: the modules that run as scripts (`if __name__ == "__main__"`);
    the others (loop, corpora, plots, training, images) are what programs share."""
    return {p.stem for p in (ROOT / "python").glob("*.py")
            if '__name__ == "__main__"' in p.read_text(encoding="utf-8")}


def test_programs_share_modules_not_each_other():
    """python/ programs import the shared modules, never another program; scripts/ and bench/
    import no program at all (what they need of one lives in the library or a shared module)."""
    programs = _programs()
    assert {"tagger", "inference_network", "kmeans", "sparse_coding", "run_table"} <= programs
    for path in (ROOT / "python").glob("*.py"):
        for name in _imports(path):
            assert name.split(".")[0] not in programs - {path.stem}, \
                f"python/{path.name} imports the program {name}"
    for folder in ("scripts", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for name in _imports(path):
                assert name.split(".")[0] not in programs, \
                    f"{folder}/{path.name} imports the program {name}"


def test_nothing_edits_the_import_path():
    """No module anywhere in the repository puts folders on the import path: programs find their
    shared modules beside them, tests and benches through pytest's `pythonpath` setting
    (pyproject.toml), and data through ebm_ext.tagging.data.data_dir."""
    tracked = subprocess.run(["git", "ls-files", "*.py", "*.sh", "*.toml", "*.cfg"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    needle = "sys" + ".path"  # spelt in two so that this file does not find itself
    offenders = [f for f in tracked if needle in (ROOT / f).read_text(encoding="utf-8")]
    assert offenders == [], f"these edit the import path: {offenders}"


def test_one_data_directory_rule():
    """Only ebm_ext.tagging.data knows where the corpora live by default."""
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    needle = '"shared" / ' + '"data"'  # in two, so that this file does not find itself
    holders = [f for f in tracked if needle in (ROOT / f).read_text(encoding="utf-8")]
    assert holders == ["ebm_ext/tagging/data.py"], holders


def test_the_programs_know_the_corpora_the_config_offers():
    import corpora
    choices = dataclasses.fields(TaggerConfig)[0].metadata["choices"]
    assert set(corpora.CORPORA) == set(choices)
