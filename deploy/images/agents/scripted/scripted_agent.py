#!/usr/bin/env python3
"""The ``scripted`` agent: a deterministic stand-in for a coding agent, for fast tests and the demo.

Standard library only (it runs inside the Worker image with the system python3).

    scripted_agent.py --script SCRIPT.json [--workdir DIR] [PROMPT]

The script (JSON) is a list of rounds; each invocation plays ONE round, in order::

    {"rounds": [
      {"write": {"path": "app/x.py", "content": "..."},   # or a list of such objects
       "delete": ["old.py"],                               # optional
       "run": ["make", "test"],                            # optional: argv, or a shell string
       "commit": "message",                                # optional: git add -A && git commit
       "report": "completed",                              # completed | blocked | failed
       "question": "...",                                  # when blocked
       "summary": "..."}
    ]}

The ``run`` command sees the prompt in the environment variable ``SCRIPTED_AGENT_PROMPT`` (e.g. a
scripted Product Owner passes the user's message on: ``orchestrator ... "$SCRIPTED_AGENT_PROMPT"``).
In ``summary`` the text ``{output}`` stands for the run command's output (stdout and stderr),
stripped, so a round can answer with what its command printed; without a ``run`` it is empty.

Which round: the environment variable ``SCRIPTED_AGENT_ROUND`` (1-based) when set, else the count
of rounds already played, kept in ``.git/scripted-agent-round`` (or ``.scripted-agent-round`` in
the working directory when it is not a git repository), so a second invocation plays the next
round. Past the last round the last one plays again (a retried invocation stays harmless). The
count moves on only once a round has finished.

Output: one JSON object a line on stdout (activities/agents/scripted.py parses them)::

    {"type": "start", "round": 1, "rounds": 2}
    {"type": "write", "path": "app/x.py", "bytes": 42}
    {"type": "delete", "path": "old.py"}
    {"type": "run", "argv": ["make", "test"], "exit_code": 1, "output": "<last 4000 chars>"}
    {"type": "commit", "sha": "<40 hex>"}
    {"type": "error", "message": "..."}
    {"type": "result", "status": "completed|blocked|failed", "summary": "...", "question": null,
     "files_changed": ["app/x.py"], "commit": null, "round": 1}

A command's failure is reported, not fatal: the round's ``report`` decides the status. Exit code
0 for completed and blocked, 1 for failed (including a bad script).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

OUTPUT_LIMIT = 4000
PROMPT_VARIABLE = "SCRIPTED_AGENT_PROMPT"
OUTPUT_MARK = "{output}"
STATUSES = ("completed", "blocked", "failed")


class ScriptError(Exception):
    pass


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def counter_path(workdir: Path) -> Path:
    git = workdir / ".git"
    return git / "scripted-agent-round" if git.is_dir() else workdir / ".scripted-agent-round"


def played_rounds(workdir: Path) -> int:
    try:
        return int(counter_path(workdir).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def choose_round(rounds: list[Any], workdir: Path) -> int:
    """The 1-based round to play."""
    forced = os.environ.get("SCRIPTED_AGENT_ROUND")
    if forced:
        number = int(forced)
        if not 1 <= number <= len(rounds):
            raise ScriptError(f"SCRIPTED_AGENT_ROUND={number}: the script has {len(rounds)} rounds")
        return number
    return min(played_rounds(workdir) + 1, len(rounds))


def inside(workdir: Path, relative: str) -> Path:
    """``relative`` under ``workdir``; refuses absolute paths and escapes."""
    if not relative or os.path.isabs(relative):
        raise ScriptError(f"path must be relative to the workspace: {relative!r}")
    target = (workdir / relative).resolve()
    if target != workdir and workdir not in target.parents:
        raise ScriptError(f"path leaves the workspace: {relative!r}")
    return target


def write_files(spec: Any, workdir: Path, changed: list[str]) -> None:
    for item in spec if isinstance(spec, list) else [spec]:
        if not isinstance(item, dict) or "path" not in item or "content" not in item:
            raise ScriptError(f"a write needs path and content: {item!r}")
        target = inside(workdir, item["path"])
        target.parent.mkdir(parents=True, exist_ok=True)
        data = str(item["content"]).encode()
        target.write_bytes(data)
        changed.append(item["path"])
        emit(type="write", path=item["path"], bytes=len(data))


def delete_files(spec: Any, workdir: Path, changed: list[str]) -> None:
    for relative in spec if isinstance(spec, list) else [spec]:
        target = inside(workdir, str(relative))
        if target.exists():
            target.unlink()
        changed.append(str(relative))
        emit(type="delete", path=str(relative))


def run_command(spec: Any, workdir: Path, prompt: str) -> str:
    """Run the round's command; returns its whole output."""
    argv = ["sh", "-c", spec] if isinstance(spec, str) else [str(a) for a in spec]
    # Rounds rewrite files within the same second: a cached .pyc (keyed on mtime and size) of the
    # previous version would shadow the new source.
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", PROMPT_VARIABLE: prompt}
    try:
        proc = subprocess.run(
            argv,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        code, output = proc.returncode, proc.stdout
    except OSError as exc:
        code, output = 127, str(exc)
    emit(type="run", argv=argv, exit_code=code, output=output[-OUTPUT_LIMIT:])
    return output


def commit(message: str, workdir: Path) -> str:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-c", "user.name=scripted-agent", "-c", "user.email=scripted-agent@localhost",
             *args],
            cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise ScriptError(f"git {args[0]} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    git("add", "-A")
    git("commit", "--allow-empty", "-m", message)
    sha = git("rev-parse", "HEAD")
    emit(type="commit", sha=sha)
    return sha


def play(round_spec: dict[str, Any], number: int, workdir: Path, prompt: str) -> dict[str, Any]:
    report = round_spec.get("report", "completed")
    if report not in STATUSES:
        raise ScriptError(f"report must be one of {STATUSES}: {report!r}")
    changed: list[str] = []
    if "write" in round_spec:
        write_files(round_spec["write"], workdir, changed)
    if "delete" in round_spec:
        delete_files(round_spec["delete"], workdir, changed)
    output = ""
    if "run" in round_spec:
        output = run_command(round_spec["run"], workdir, prompt)
    sha = commit(str(round_spec["commit"]), workdir) if round_spec.get("commit") else None
    question = round_spec.get("question") if report == "blocked" else None
    if report == "blocked" and not question:
        question = "The scripted agent is blocked."
    return {
        "status": report,
        "summary": str(round_spec.get("summary", f"scripted round {number}")).replace(
            OUTPUT_MARK, output.strip()
        ),
        "question": question,
        "files_changed": list(dict.fromkeys(changed)),
        "commit": sha,
        "round": number,
    }


def load_script(path: str | None) -> list[dict[str, Any]]:
    source = path or os.environ.get("SCRIPTED_AGENT_SCRIPT")
    if not source:
        raise ScriptError("no script: pass --script or set SCRIPTED_AGENT_SCRIPT")
    try:
        script = json.loads(Path(source).read_text())
    except (OSError, ValueError) as exc:
        raise ScriptError(f"cannot read the script {source}: {exc}") from exc
    rounds = script.get("rounds") if isinstance(script, dict) else None
    if not isinstance(rounds, list) or not rounds or not all(isinstance(r, dict) for r in rounds):
        raise ScriptError("the script needs a non-empty list of round objects under 'rounds'")
    return rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A deterministic scripted coding agent.")
    parser.add_argument("--script", help="the script file (default: $SCRIPTED_AGENT_SCRIPT)")
    parser.add_argument("--workdir", default=".", help="the workspace (default: cwd)")
    parser.add_argument(
        "prompt", nargs="*", help="the task (given to run commands as $SCRIPTED_AGENT_PROMPT)"
    )
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    try:
        rounds = load_script(args.script)
        number = choose_round(rounds, workdir)
        emit(type="start", round=number, rounds=len(rounds))
        result = play(rounds[number - 1], number, workdir, " ".join(args.prompt))
    except ScriptError as exc:
        emit(type="error", message=str(exc))
        emit(type="result", status="failed", summary=str(exc), question=None, files_changed=[],
             commit=None, round=None)  # fmt: skip
        return 1
    if not os.environ.get("SCRIPTED_AGENT_ROUND"):
        counter = counter_path(workdir)
        counter.write_text(f"{max(played_rounds(workdir), number)}\n")
    emit(type="result", **result)
    return 1 if result["status"] == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
