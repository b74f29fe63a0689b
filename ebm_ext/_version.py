"""The release of ebm_ext, read by pyproject.toml and docs/conf.py."""
__version__ = "0.1.0"
