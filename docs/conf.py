"""Sphinx configuration of ebm_ext's documentation site.

Build it with ``bash scripts/docs.sh`` (warnings are errors, as in CI); the site lands in
``docs/_build/html``. The API reference is generated from the docstrings (autosummary over
``docs/api.rst``), which are Google style (napoleon); the Markdown pages are read by MyST.
The extension must be importable: ``scripts/setup.sh`` builds it in place.
"""
import ebm_ext

project = "ebm_ext"
author = "the ebm_ext developers"
copyright = "2026, the ebm_ext developers"
release = ebm_ext.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]

autosummary_generate = True
# Module pages list what a module defines, not what it imports (losses imports viterbi and Tensor).
autosummary_imported_members = False
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# The custom ops' wrappers are plain functions; torch's own classes are documented by torch.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Formulas are written in plain text: the site needs no math renderer from the network.
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"ebm_ext {release}"
html_static_path = ["_static"]


def setup(app):
    # The computed pictures are drawn at every build, so they follow the library.
    import pathlib
    import runpy

    here = pathlib.Path(__file__).parent
    runpy.run_path(str(here / "figures.py"))["draw_all"](here / "_static" / "generated")
