"""The package version: a bottom-layer module (imports nothing), read by ``initdoctor.__version__``,
the JSON outputs, ``initdoctor --version`` and ``pyproject.toml`` (``[tool.setuptools.dynamic]``)."""

__version__ = "0.11.0"
