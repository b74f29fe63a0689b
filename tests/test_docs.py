"""The documentation cannot rot: every docstring example runs as a doctest, every Python block
of the README and of docs/ runs, and every public name has a reference-shaped docstring (Args
and Returns, the Google style that docs/conf.py's napoleon reads)."""
import dataclasses
import doctest
import importlib
import inspect
import pathlib
import pkgutil
import re

import pytest
import torch

import ebm_ext

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
PAGES = [p for p in PAGES if "_build" not in p.parts]
# A block that needs what a test cannot make (a trained tagger, a GPU) says so on its first
# line; it is shown, not run. tests/test_docs.py lists how many there are, so they stay few.
NOT_RUN = "# not run:"
MODULES = ["ebm_ext"] + sorted(m.name for m in pkgutil.walk_packages(ebm_ext.__path__, "ebm_ext.")
                              if not m.name.endswith("._C"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    for test in finder.find(module, name, globs={"torch": torch, "ebm_ext": ebm_ext}):
        if test.lineno is None or not test.examples:
            continue
        torch.manual_seed(0)
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (above)"


def python_blocks(page: pathlib.Path):
    text = page.read_text(encoding="utf-8")
    for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
        line = text[:match.start()].count("\n") + 2
        yield line, match.group(1)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_code_blocks_run(page, capsys):
    namespace = {"__name__": f"docs:{page.name}"}
    for line, code in python_blocks(page):
        if code.startswith(NOT_RUN):
            continue
        torch.manual_seed(0)
        exec(compile(code, f"{page}:{line}", "exec"), namespace)


def test_few_blocks_are_not_run():
    skipped = [(p.name, line) for p in PAGES for line, code in python_blocks(p)
               if code.startswith(NOT_RUN)]
    assert len(skipped) <= 3, skipped


def public_callables():
    names = [(ebm_ext, n) for n in ebm_ext.__all__ if callable(getattr(ebm_ext, n))]
    for module in (ebm_ext.losses, ebm_ext.nn, ebm_ext.cluster, ebm_ext.sparse,
                   ebm_ext.inference, ebm_ext.checkpoint, ebm_ext.struct):
        names += [(module, n) for n, obj in vars(module).items()
                  if not n.startswith("_") and callable(obj)
                  and getattr(obj, "__module__", None) == module.__name__]
    # The tagger application: its package's names and the functions users call directly.
    from ebm_ext import tagging
    from ebm_ext.tagging import data, stream, tokenize
    names += [(tagging, n) for n in tagging.__all__ if n != "data"]
    names += [(data, n) for n in ("data_dir", "corpus_file", "read_tweets", "read_conllu",
                                  "read_sentences", "read_tagset", "encode", "collate",
                                  "encode_sentence", "Vocabularies", "Batch")]
    names += [(stream, "tag_stream"), (tokenize, "tokenize_tweet"), (tokenize, "tokenize")]
    return names


PUBLIC = public_callables()


@pytest.mark.parametrize("module,name", PUBLIC, ids=[f"{m.__name__}.{n}" for m, n in PUBLIC])
def test_public_docstrings_are_reference_shaped(module, name):
    obj = getattr(module, name)
    doc = inspect.getdoc(obj.__init__ if inspect.isclass(obj) and "Args:" not in (obj.__doc__ or "") else obj) or ""
    if inspect.isclass(obj):
        doc = (obj.__doc__ or "") + doc
    described = "Args:" in doc or (dataclasses.is_dataclass(obj) and "Attributes:" in doc)
    assert described or not inspect.signature(obj).parameters, f"{name}: no Args: section"
    if not inspect.isclass(obj):
        assert "Returns:" in doc or "Yields:" in doc, f"{name}: no Returns: section"
