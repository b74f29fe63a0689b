"""CI's property tests draw the same examples whatever a run selects (tests/conftest.py)."""
import os
import subprocess
import sys
from pathlib import Path

PROPERTY_TEST = '''
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

@pytest.fixture(params=["a", "b"])
def side(request):
    yield request.param

@settings(max_examples=5, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 10 ** 9))
def test_draws(side, n):
    with open({log!r}, "a") as f:
        f.write(f"{{side}} {{n}}\\n")
'''


def _draws(tmp_path, *select):
    log = tmp_path / "draws.log"
    log.unlink(missing_ok=True)
    (tmp_path / "test_draws.py").write_text(PROPERTY_TEST.format(log=str(log)))
    env = dict(os.environ, HYPOTHESIS_PROFILE="ci",
               PYTHONPATH=str(Path(__file__).parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # Our conftest loaded as a plugin: its profiles and hooks, in a run of a file of our own.
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                    str(tmp_path / "test_draws.py"), *select], cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    lines = log.read_text().split("\n")
    return {side: [n for s, n in (x.split() for x in lines if x) if s == side] for side in "ab"}


def test_a_parametrised_property_test_draws_its_own_examples_whatever_runs(tmp_path):
    together = _draws(tmp_path)
    alone = _draws(tmp_path, "-k", "b")
    assert together["b"] == alone["b"]
    assert together["a"] != together["b"]  # each parametrisation is keyed by its own node id
    assert together == _draws(tmp_path)  # and a rerun draws the same
