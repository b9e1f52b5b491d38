# ruff: noqa: E501  (a lockfile's lines are as uv writes them)
"""A project locked with uv (``pyproject.toml`` and ``uv.lock``), with one package from PyPI
(six, which the deploy tests' app reports the version of) and one in its dev group (iniconfig,
which a release never gets). Made with ``uv lock``; as text here so that nothing in the test tree
looks like a project to the tools."""

from __future__ import annotations

from pathlib import Path

DEPENDENCY = "six==1.17.0"
DEV_DEPENDENCY = "iniconfig==2.0.0"

PYPROJECT = """[project]
name = "hello"
version = "0.1.0"
requires-python = ">=3.11"
dependencies = ["six==1.17.0"]

[dependency-groups]
dev = ["iniconfig==2.0.0"]
"""

UV_LOCK = """version = 1
revision = 5
requires-python = ">=3.11"

[[package]]
name = "hello"
version = "0.1.0"
source = { virtual = "." }
dependencies = [
    { name = "six" },
]

[package.dev-dependencies]
dev = [
    { name = "iniconfig" },
]

[package.metadata]
requires-dist = [{ name = "six", specifier = "==1.17.0" }]

[package.metadata.requires-dev]
dev = [{ name = "iniconfig", specifier = "==2.0.0" }]

[[package]]
name = "iniconfig"
version = "2.0.0"
source = { registry = "https://pypi.org/simple" }
sdist = { url = "https://files.pythonhosted.org/packages/d7/4b/cbd8e699e64a6f16ca3a8220661b5f83792b3017d0f79807cb8708d33913/iniconfig-2.0.0.tar.gz", hash = "sha256:2d91e135bf72d31a410b17c16da610a82cb55f6b0477d1a902134b24a455b8b3", size = 4646, upload-time = "2023-01-07T11:08:11.254Z" }
wheels = [
    { url = "https://files.pythonhosted.org/packages/ef/a6/62565a6e1cf69e10f5727360368e451d4b7f58beeac6173dc9db836a5b46/iniconfig-2.0.0-py3-none-any.whl", hash = "sha256:b6a85871a79d2e3b22d2d1b94ac2824226a63c6b741c88f7ae975f18b6778374", size = 5892, upload-time = "2023-01-07T11:08:09.864Z" },
]

[[package]]
name = "six"
version = "1.17.0"
source = { registry = "https://pypi.org/simple" }
sdist = { url = "https://files.pythonhosted.org/packages/94/e7/b2c673351809dca68a0e064b6af791aa332cf192da575fd474ed7d6f16a2/six-1.17.0.tar.gz", hash = "sha256:ff70335d468e7eb6ec65b95b99d3a2836546063f63acc5171de367e834932a81", size = 34031, upload-time = "2024-12-04T17:35:28.174Z" }
wheels = [
    { url = "https://files.pythonhosted.org/packages/b7/ce/149a00dd41f10bc29e5921b496af8b574d8413afcd5e30dfa0ed46c2cc5e/six-1.17.0-py2.py3-none-any.whl", hash = "sha256:4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274", size = 11050, upload-time = "2024-12-04T17:35:26.475Z" },
]
"""


def write_locked_project(directory: Path) -> None:
    """``pyproject.toml`` and ``uv.lock`` in ``directory``."""
    (directory / "pyproject.toml").write_text(PYPROJECT)
    (directory / "uv.lock").write_text(UV_LOCK)
