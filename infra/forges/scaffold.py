"""A project's first commit: the project template rendered with copier, pushed to the forge.

Idempotent: when the repository already has its branch (a retry after a crash, or a second
request), its head is returned with ``created=False`` and nothing is pushed again.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import copier
from copier.errors import CopierError

from core.faults import crash_point
from infra.errors import refused
from infra.forges.base import BRANCH, Forge
from infra.git import git


@dataclass(frozen=True)
class Scaffolded:
    full_name: str
    commit_sha: str
    created: bool  # False when the repository already existed


def scaffold(
    forge: Forge,
    template_dir: Path,
    *,
    project_name: str,
    full_name: str | None = None,
    description: str = "",
    modules: list[str] | None = None,
) -> Scaffolded:
    """The project's repository on ``forge`` (``full_name``, or the forge's name for the
    project), made with one commit rendered from ``template_dir`` unless it exists."""
    try:
        full_name = full_name or forge.full_name_for(project_name)
    except ValueError as exc:
        raise refused(str(exc), "InvalidScaffoldRequest") from None
    existing = forge.head(full_name)
    if existing is not None:
        return Scaffolded(full_name, existing, created=False)
    if forge.create(full_name):
        # The forge made it from its own template (GitHub's template repository).
        generated = forge.head(full_name)
        if generated is None:
            raise RuntimeError(f"{full_name} has no {BRANCH} branch after its generation")
        return Scaffolded(full_name, generated, created=True)
    with tempfile.TemporaryDirectory(prefix="scaffold-") as tmp:
        worktree = Path(tmp) / "repo"
        render(template_dir, worktree, project_name, description, modules or [])
        git("init", "--quiet", f"--initial-branch={BRANCH}", cwd=worktree)
        git("add", "--all", cwd=worktree)
        git("commit", "--quiet", "-m", f"Scaffold {project_name}", cwd=worktree)
        pushed = forge.push(full_name, worktree)
        crash_point("scaffold.after_push")
    head = forge.head(full_name)
    if head is None:
        raise RuntimeError(f"{full_name} has no {BRANCH} branch right after the push")
    return Scaffolded(full_name, head, created=pushed)


def render(
    template_dir: Path, worktree: Path, project_name: str, description: str, modules: list[str]
) -> None:
    if not (template_dir / "copier.yml").is_file():
        raise refused(
            f"the project template is missing: no copier.yml in {template_dir}", "TemplateMissing"
        )
    data = {
        "project_name": project_name,
        "description": description or f"The {project_name} project.",
        "modules": modules or ["backend"],
    }
    try:
        copier.run_copy(
            str(template_dir), str(worktree), data=data, defaults=True, quiet=True, unsafe=False
        )
    except (CopierError, ValueError) as exc:
        # A bad answer (an unknown module) stays bad however often it is retried.
        raise refused(
            f"the template refused the project: {exc}", "InvalidScaffoldRequest"
        ) from None
