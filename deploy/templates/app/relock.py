"""Regenerate the template's lockfiles: one uv.lock per combination of modules.

    python deploy/templates/app/relock.py            # lock what changed in pyproject.toml
    python deploy/templates/app/relock.py --upgrade  # and move every pin to its newest release

Each combination is rendered with copier into a scratch directory, locked there with `uv lock`
(starting from the committed lockfile, so unchanged pins stay), and its uv.lock copied back to
project/ under the name copier renders to uv.lock for that combination only.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import copier

TEMPLATE = Path(__file__).resolve().parent
COMBINATIONS = (["backend"], ["tg_bot"], ["backend", "tg_bot"])


def lockfile(modules: list[str]) -> Path:
    """The template's lockfile for ``modules`` (the copier.yml's ``lock`` value names it)."""
    key = "+".join(sorted(modules))
    return TEMPLATE / "project" / f"{{% if lock == '{key}' %}}uv.lock{{% endif %}}"


def relock(modules: list[str], *, upgrade: bool, uv: str) -> None:
    with tempfile.TemporaryDirectory(prefix="relock-") as scratch:
        project = Path(scratch) / "project"
        data = {"project_name": "app", "modules": modules}
        copier.run_copy(str(TEMPLATE), str(project), data=data, defaults=True, quiet=True)
        command = [uv, "lock", *(["--upgrade"] if upgrade else [])]
        subprocess.run(command, cwd=project, check=True)
        shutil.copyfile(project / "uv.lock", lockfile(modules))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upgrade", action="store_true", help="newest releases for every pin")
    parser.add_argument("--uv", default=shutil.which("uv") or "uv", help="the uv to run")
    args = parser.parse_args()
    # A path given relative to here must still name uv from the scratch directory.
    uv = str(Path(args.uv).absolute()) if "/" in args.uv else args.uv
    for modules in COMBINATIONS:
        relock(modules, upgrade=args.upgrade, uv=uv)
        print(f"locked {'+'.join(modules)}: {lockfile(modules).name}")


if __name__ == "__main__":
    main()
