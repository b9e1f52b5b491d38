"""What ARCHITECTURE.md promises about the tree, checked.

The import rules themselves are import-linter contracts (pyproject.toml); these tests show they
really fail on a wrong arrow, and check what no import rule can: every activities/ module holds
activities, the documents name the packages that exist, comments cite files that exist.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.paths import REPO_ROOT

PACKAGES = [
    "core",
    "db",
    "infra",
    "gateway",
    "activities",
    "workflows",
    "bridges",
    "api",
    "cli",
    "bot",
    "stack",
]
# Top-level folders that are no Python package of the product but belong to the tree.
OTHER_FOLDERS = ["deploy", "testing", "tests", "bench", "scripts", "docs"]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def run_contracts(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(REPO_ROOT / "pyproject.toml")],
        cwd=root,
        env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The product's packages, copied: the contracts run on the copy, which tests may break."""
    root = tmp_path_factory.mktemp("tree")
    for package in PACKAGES:
        shutil.copytree(
            REPO_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return root


def test_the_tree_keeps_its_import_contracts(tree_copy: Path) -> None:
    kept = run_contracts(tree_copy)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "0 broken" in kept.stdout


@pytest.mark.parametrize(
    ("module", "wrong_import", "contract"),
    [
        ("infra/probe.py", "import temporalio.activity", "infra knows nothing of Temporal"),
        ("workflows/probe.py", "import db.tasks", "workflows import core and activities"),
        ("activities/probe.py", "import api.app", "no package but api imports api"),
        ("bridges/probe.py", "import workflows.engineering", "only the Temporal worker"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(
    tree_copy: Path, module: str, wrong_import: str, contract: str
) -> None:
    probe = tree_copy / module
    probe.write_text(f"{wrong_import}\n")
    try:
        broken = run_contracts(tree_copy)
    finally:
        probe.unlink()
    assert broken.returncode != 0
    section = broken.stdout.split("Broken contracts", 1)[-1]
    assert contract in section, broken.stdout


def activity_modules() -> list[str]:
    root = REPO_ROOT / "activities"
    return sorted(
        f"activities.{path.stem}" for path in root.glob("*.py") if path.name != "__init__.py"
    )


def graph_node_classes() -> set[type]:
    """The classes whose methods the LangGraph plugin runs as activities (the graphs' nodes)."""
    from workflows.development import build_development_graph
    from workflows.devops import build_devops_graph

    found = set()
    for build in (build_development_graph, build_devops_graph):
        hints = inspect.get_annotations(build, eval_str=True)
        found.add(hints["nodes"])
    return found


@pytest.mark.parametrize("name", activity_modules())
def test_every_activities_module_defines_activities(name: str) -> None:
    module = importlib.import_module(name)
    nodes = graph_node_classes()
    classes = [
        value
        for value in vars(module).values()
        if inspect.isclass(value) and value.__module__ == module.__name__
    ]
    defines = [
        cls
        for cls in classes
        if cls in nodes
        or any(hasattr(member, "__temporal_activity_definition") for member in vars(cls).values())
    ]
    assert defines, f"{name} defines no activity: infrastructure belongs in infra/"


def test_the_documents_name_the_packages_there_are() -> None:
    folders = sorted(
        path.name
        for path in REPO_ROOT.iterdir()
        if path.is_dir() and not path.name.startswith(".") and path.name in PACKAGES + OTHER_FOLDERS
    )
    on_disk = sorted(
        path.name
        for path in REPO_ROOT.iterdir()
        if path.is_dir() and (path / "__init__.py").exists()
    )
    assert sorted(set(on_disk) - {"testing", "tests"}) == sorted(PACKAGES)
    architecture = (REPO_ROOT / "ARCHITECTURE.md").read_text()
    readme_layout = (REPO_ROOT / "README.md").read_text().split("## Layout", 1)[1]
    for folder in folders:
        assert re.search(rf"^{folder}/", architecture, re.M), f"ARCHITECTURE.md lacks {folder}/"
        assert re.search(rf"^{folder}/", readme_layout, re.M), (
            f"the README's layout lacks {folder}/"
        )


def test_the_tests_mirror_the_tree() -> None:
    for path in (REPO_ROOT / "tests").iterdir():
        if path.is_dir() and (path / "__init__.py").exists():
            assert path.name in PACKAGES or path.name == "e2e", f"tests/{path.name} mirrors nothing"
    for path in (REPO_ROOT / "tests" / "infra").iterdir():
        if path.is_dir() and (path / "__init__.py").exists():
            assert (REPO_ROOT / "infra" / path.name).exists() or path.name in {
                "ansible",  # the playbooks (deploy/ansible) through infra/ansible.py
                "images",  # infra/images.py
                "containers",  # infra/containers.py
            }, f"tests/infra/{path.name} mirrors nothing in infra/"


# A path of ours cited in a comment or docstring: <top folder>/<...>.<extension>.
CITED_PATH = re.compile(
    r"(?<![\w./-])((?:" + "|".join(PACKAGES + OTHER_FOLDERS) + r")/[\w./{}*-]*[\w*])"
)
# A module of ours named in a comment or docstring: ``infra.forges.make_forge``.
CITED_MODULE = re.compile(r"``((?:" + "|".join(PACKAGES) + r")\.[\w.]+)``")


def texts_of(path: Path) -> list[str]:
    """The comments and docstrings of a Python file; the whole of a Markdown file."""
    source = path.read_text()
    if path.suffix == ".md":
        return [source]
    found = [
        line.split("#", 1)[1] for line in source.splitlines() if "#" in line and '"#' not in line
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(
            node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
        ) and (doc := ast.get_docstring(node)):
            found.append(doc)
    return found


def our_files() -> list[Path]:
    files = [REPO_ROOT / "README.md", REPO_ROOT / "ARCHITECTURE.md"]
    files += sorted((REPO_ROOT / "docs").rglob("*.md"))
    for folder in [*PACKAGES, "testing", "tests", "bench"]:
        files += sorted((REPO_ROOT / folder).rglob("*.py"))
    return [path for path in files if "migrations" not in path.parts]


def exists(cited: str) -> bool:
    if "{" in cited or "<" in cited or "*" in cited:
        return True  # a pattern, not a path
    return (REPO_ROOT / cited.rstrip("/.")).exists()


def module_exists(cited: str) -> bool:
    """The longest importable prefix of ``cited`` is a module, and the rest are its names."""
    parts = cited.split(".")
    for end in range(len(parts), 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:end]))
        except ImportError:
            continue
        target: object = module
        for name in parts[end:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


def test_comments_cite_files_and_modules_that_exist() -> None:
    missing = []
    for path in our_files():
        where = path.relative_to(REPO_ROOT)
        for text in texts_of(path):
            missing += [f"{where}: {p}" for p in CITED_PATH.findall(text) if not exists(p)]
            missing += [f"{where}: {m}" for m in CITED_MODULE.findall(text) if not module_exists(m)]
    assert not missing, "cited but not there:\n" + "\n".join(sorted(set(missing)))


DUPLICATES = shutil.which("duplicates")


@pytest.mark.skipif(DUPLICATES is None, reason="the duplicates command is not on this machine")
def test_the_product_writes_nothing_twice(tmp_path: Path) -> None:
    """No two places of the product share ten or more lines (the same, or of the same shape),
    but migrations (each is a frozen record) and the shape of Typer commands (their options)."""
    for package in PACKAGES:
        shutil.copytree(
            REPO_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    found = subprocess.run(
        [str(DUPLICATES), "--repo", str(tmp_path), "--min-lines", "10", "--most", "200"],
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    assert not found.startswith("incomplete"), found
    pairs = [line for line in found.splitlines() if re.match(r"D\d+ ", line)]
    written_twice = [
        pair
        for pair in pairs
        if "/migrations/" not in pair
        and not (re.match(r"D\d+ cli/\S+ ~ cli/", pair) and " shape" in pair)
    ]
    assert not written_twice, found
