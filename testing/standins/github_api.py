"""A local stand-in of GitHub: the REST v3 endpoints the adapter uses, and git over smart HTTP.

The API lives under ``/api/v3`` (as on GitHub Enterprise), repositories are bare git repositories
under ``root`` served by the real ``git http-backend`` at ``/<owner>/<name>.git``. Both check the
token: the API ``Authorization: Bearer|token <token>``, git Basic auth whose password is the token
(GitHub's ``x-access-token:<token>``). JSON shapes follow GitHub's documentation, trimmed to the
fields the adapter reads plus the usual identifying ones.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import subprocess
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse

DOCS = "https://docs.github.com/rest"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    env |= {"GIT_AUTHOR_NAME": "github", "GIT_AUTHOR_EMAIL": "noreply@github.invalid"}
    env |= {"GIT_COMMITTER_NAME": "github", "GIT_COMMITTER_EMAIL": "noreply@github.invalid"}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr}")
    return done.stdout.strip()


@dataclass
class Failure:
    """A canned error answer for requests matching ``method`` and ``path`` (a regex)."""

    method: str
    path: str
    status: int
    body: Any
    headers: dict[str, str]
    times: int = 1


@dataclass
class GitHubStandIn:
    root: Path
    tokens: dict[str, str] = field(default_factory=dict)  # token -> login
    orgs: set[str] = field(default_factory=set)
    base_url: str = ""  # set once served, for the URLs in answers
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)
    pulls: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # "METHOD path", for assertions
    seen_authorizations: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    # --- set-up from tests ----------------------------------------------------------------------

    def fail(
        self,
        method: str,
        path: str,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        body = {"message": message, "documentation_url": DOCS, "status": str(status)}
        self.respond(method, path, status, body, headers, times)

    def respond(
        self,
        method: str,
        path: str,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` matching requests with ``body`` instead of the real thing."""
        self.failures.append(Failure(method, path, status, body, headers or {}, times))

    def add_repository(
        self, full_name: str, files: dict[str, str], *, is_template: bool = False
    ) -> dict[str, Any]:
        """A repository with one commit of ``files`` on main."""
        repo = self._new_repository(full_name, is_template=is_template, private=False)
        work = self.root / ".work" / full_name
        work.mkdir(parents=True)
        for name, text in files.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_text(text)
        _git("init", "--quiet", "--initial-branch=main", cwd=work)
        _git("add", "--all", cwd=work)
        _git("commit", "--quiet", "-m", "initial", cwd=work)
        _git("push", "--quiet", str(self.bare(full_name)), "main", cwd=work)
        return repo

    def bare(self, full_name: str) -> Path:
        owner, name = full_name.split("/")
        return self.root / owner / f"{name}.git"

    # --- the model ------------------------------------------------------------------------------

    def _new_repository(
        self, full_name: str, *, is_template: bool, private: bool
    ) -> dict[str, Any]:
        owner, name = full_name.split("/")
        bare = self.bare(full_name)
        bare.parent.mkdir(parents=True, exist_ok=True)
        _git("init", "--quiet", "--bare", "--initial-branch=main", str(bare), cwd=self.root)
        repo = {
            "id": len(self.repos) + 1,
            "node_id": f"R_{len(self.repos) + 1}",
            "name": name,
            "full_name": full_name,
            "owner": {"login": owner, "type": "Organization" if owner in self.orgs else "User"},
            "private": private,
            "html_url": f"{self.base_url}/{full_name}",
            "url": f"{self.base_url}/api/v3/repos/{full_name}",
            "clone_url": f"{self.base_url}/{full_name}.git",
            "default_branch": "main",
            "is_template": is_template,
            "created_at": _now(),
        }
        self.repos[full_name] = repo
        self.pulls[full_name] = []
        return repo

    def head(self, full_name: str, branch: str) -> str | None:
        try:
            return _git(
                "rev-parse", "--verify", f"refs/heads/{branch}^{{commit}}", cwd=self.bare(full_name)
            )
        except RuntimeError:
            return None

    def merge(self, full_name: str, pr: dict[str, Any], base: str, head: str) -> str | None:
        """The merge commit of ``head`` into ``base``, moved onto the base branch; None when
        they conflict."""
        bare = self.bare(full_name)
        try:
            tree = _git("merge-tree", "--write-tree", "--no-messages", base, head, cwd=bare)
        except RuntimeError:
            return None  # exit 1: conflicts
        message = f"Merge pull request #{pr['number']} from {pr['head']['label']}\n\n{pr['title']}"
        commit = _git(
            "commit-tree", tree.splitlines()[0], "-p", base, "-p", head, "-m", message, cwd=bare
        )
        _git("update-ref", f"refs/heads/{pr['base']['ref']}", commit, base, cwd=bare)
        return commit

    def _stat(self, full_name: str, base: str, branch: str) -> dict[str, int]:
        numstat = _git("diff", "--numstat", f"{base}...{branch}", cwd=self.bare(full_name))
        rows = [line.split("\t") for line in numstat.splitlines() if line]
        return {
            "changed_files": len(rows),
            "additions": sum(int(r[0]) for r in rows if r[0] != "-"),
            "deletions": sum(int(r[1]) for r in rows if r[1] != "-"),
        }


def _error(status: int, message: str, errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"message": message, "documentation_url": DOCS, "status": str(status)}
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status)


_TOKEN = re.compile(r"^(?:Bearer|token)\s+(\S+)$", re.IGNORECASE)


def create_app(state: GitHubStandIn) -> FastAPI:
    app = FastAPI()

    def login_of(request: Request) -> str | None:
        match = _TOKEN.match(request.headers.get("authorization", ""))
        return state.tokens.get(match.group(1)) if match else None

    @app.middleware("http")
    async def gatekeeper(request: Request, call_next: Any) -> Response:
        path = request.url.path
        state.requests.append(f"{request.method} {path}")
        state.seen_authorizations.append(request.headers.get("authorization", ""))
        for failure in state.failures:
            if (
                failure.times
                and failure.method == request.method
                and re.fullmatch(failure.path, path)
            ):
                failure.times -= 1
                return JSONResponse(failure.body, failure.status, headers=failure.headers)
        if path.startswith("/api/v3/") and login_of(request) is None:
            return _error(401, "Bad credentials")
        response: Response = await call_next(request)
        return response

    # --- REST -----------------------------------------------------------------------------------

    @app.get("/api/v3/user")
    async def user(request: Request) -> dict[str, Any]:
        return {"login": login_of(request), "id": 1, "type": "User"}

    @app.get("/api/v3/repos/{owner}/{name}")
    async def get_repo(owner: str, name: str) -> Any:
        repo = state.repos.get(f"{owner}/{name}")
        return repo if repo is not None else _error(404, "Not Found")

    def create(full_name: str, body: dict[str, Any], **extra: Any) -> Any:
        if full_name in state.repos:
            return _error(
                422,
                "Repository creation failed.",
                [
                    {
                        "resource": "Repository",
                        "code": "custom",
                        "field": "name",
                        "message": "name already exists on this account",
                    }
                ],
            )
        repo = state._new_repository(
            full_name, is_template=False, private=bool(body.get("private", False))
        )
        repo.update(extra)
        return JSONResponse(repo, status_code=201)

    @app.post("/api/v3/user/repos")
    async def create_user_repo(request: Request) -> Any:
        body = await request.json()
        with state.lock:
            return create(f"{login_of(request)}/{body['name']}", body)

    @app.post("/api/v3/orgs/{org}/repos")
    async def create_org_repo(org: str, request: Request) -> Any:
        if org not in state.orgs:
            return _error(404, "Not Found")
        body = await request.json()
        with state.lock:
            return create(f"{org}/{body['name']}", body)

    @app.post("/api/v3/repos/{owner}/{name}/generate")
    async def generate(owner: str, name: str, request: Request) -> Any:
        template = state.repos.get(f"{owner}/{name}")
        if template is None:
            return _error(404, "Not Found")
        if not template["is_template"]:
            return _error(422, f"{owner}/{name} is not a template repository")
        body = await request.json()
        full_name = f"{body.get('owner') or login_of(request)}/{body['name']}"
        with state.lock:
            answer = create(full_name, body, template_repository=template)
            if answer.status_code == 201:
                # Like GitHub: the template's files in one fresh commit, without its history.
                bare = state.bare(full_name)
                _git("fetch", "--quiet", str(state.bare(f"{owner}/{name}")), "main", cwd=bare)
                commit = _git("commit-tree", "FETCH_HEAD^{tree}", "-m", "Initial commit", cwd=bare)
                _git("update-ref", "refs/heads/main", commit, cwd=bare)
            return answer

    @app.get("/api/v3/repos/{owner}/{name}/branches/{branch:path}")
    async def get_branch(owner: str, name: str, branch: str) -> Any:
        full_name = f"{owner}/{name}"
        sha = state.head(full_name, branch) if full_name in state.repos else None
        if sha is None:
            return _error(404, "Branch not found")
        return {"name": branch, "commit": {"sha": sha}, "protected": False}

    def pull_json(full_name: str, pr: dict[str, Any], *, full: bool) -> dict[str, Any]:
        answer = dict(pr)
        if full:
            answer |= state._stat(full_name, pr["base"]["ref"], pr["head"]["ref"])
            answer["merged"] = pr["merged_at"] is not None
        return answer

    def find_pull(full_name: str, number: int) -> dict[str, Any] | None:
        return next((pr for pr in state.pulls.get(full_name, []) if pr["number"] == number), None)

    @app.get("/api/v3/repos/{owner}/{name}/pulls")
    async def list_pulls(
        owner: str,
        name: str,
        head: str | None = None,
        wanted_state: Annotated[str, Query(alias="state")] = "open",
        base: str | None = None,
    ) -> Any:
        full_name = f"{owner}/{name}"
        if full_name not in state.repos:
            return _error(404, "Not Found")
        wanted = state.pulls[full_name]
        if head is not None:
            wanted = [p for p in wanted if p["head"]["label"] == head]
        if base is not None:
            wanted = [p for p in wanted if p["base"]["ref"] == base]
        if wanted_state != "all":
            wanted = [p for p in wanted if p["state"] == wanted_state]
        return [pull_json(full_name, p, full=False) for p in wanted]

    @app.get("/api/v3/repos/{owner}/{name}/pulls/{number}")
    async def get_pull(owner: str, name: str, number: int) -> Any:
        full_name = f"{owner}/{name}"
        pr = find_pull(full_name, number)
        return _error(404, "Not Found") if pr is None else pull_json(full_name, pr, full=True)

    @app.patch("/api/v3/repos/{owner}/{name}/pulls/{number}")
    async def update_pull(owner: str, name: str, number: int, request: Request) -> Any:
        """Close or reopen it (``state``), or change its title."""
        full_name = f"{owner}/{name}"
        body = await request.json()
        with state.lock:
            pr = find_pull(full_name, number)
            if pr is None:
                return _error(404, "Not Found")
            if body.get("state") in ("open", "closed") and pr["merged_at"] is None:
                pr["state"] = body["state"]
                pr["closed_at"] = _now() if body["state"] == "closed" else None
            if "title" in body:
                pr["title"] = body["title"]
            return pull_json(full_name, pr, full=True)

    @app.put("/api/v3/repos/{owner}/{name}/pulls/{number}/merge")
    async def merge_pull(owner: str, name: str, number: int, request: Request) -> Any:
        """A merge commit of the head into the base (the ``merge`` method), as GitHub answers:
        405 when it cannot be merged (closed, merged, conflicts), 409 when ``sha`` is not the
        head any more."""
        full_name = f"{owner}/{name}"
        body = await request.json() if await request.body() else {}
        with state.lock:
            pr = find_pull(full_name, number)
            if pr is None:
                return _error(404, "Not Found")
            if pr["state"] != "open":
                return _error(405, "Pull Request is not mergeable")
            head = state.head(full_name, pr["head"]["ref"])
            base = state.head(full_name, pr["base"]["ref"])
            if head is None or base is None:
                return _error(405, "Pull Request is not mergeable")
            if body.get("sha") and body["sha"] != head:
                return _error(409, "Head branch was modified. Review and try the merge again.")
            commit = state.merge(full_name, pr, base, head)
            if commit is None:
                return _error(405, "Pull Request is not mergeable")
            pr |= {"state": "closed", "merged_at": _now(), "closed_at": _now()}
            pr |= {"merge_commit_sha": commit, "head": {**pr["head"], "sha": head}}
        return {"sha": commit, "merged": True, "message": "Pull Request successfully merged"}

    @app.post("/api/v3/repos/{owner}/{name}/pulls")
    async def create_pull(owner: str, name: str, request: Request) -> Any:
        full_name = f"{owner}/{name}"
        if full_name not in state.repos:
            return _error(404, "Not Found")
        body = await request.json()
        branch, base = str(body["head"]).split(":")[-1], str(body.get("base") or "main")
        with state.lock:
            for pr in state.pulls[full_name]:
                if (
                    pr["head"]["ref"] == branch
                    and pr["base"]["ref"] == base
                    and pr["state"] == "open"
                ):
                    return _error(
                        422,
                        "Validation Failed",
                        [
                            {
                                "resource": "PullRequest",
                                "code": "custom",
                                "message": f"A pull request already exists for {owner}:{branch}.",
                            }
                        ],
                    )
            head_sha, base_sha = state.head(full_name, branch), state.head(full_name, base)
            if head_sha is None or base_sha is None:
                return _error(
                    422,
                    "Validation Failed",
                    [
                        {
                            "resource": "PullRequest",
                            "code": "invalid",
                            "field": "head" if head_sha is None else "base",
                        }
                    ],
                )
            number = len(state.pulls[full_name]) + 1
            pr = {
                "id": number * 1000,
                "number": number,
                "state": "open",
                "title": body.get("title", ""),
                "body": body.get("body"),
                "html_url": f"{state.base_url}/{full_name}/pull/{number}",
                "url": f"{state.base_url}/api/v3/repos/{full_name}/pulls/{number}",
                "head": {"label": f"{owner}:{branch}", "ref": branch, "sha": head_sha},
                "base": {"label": f"{owner}:{base}", "ref": base, "sha": base_sha},
                "merged_at": None,
                "closed_at": None,
                # GitHub names a test merge's commit while it is open; the stand-in none.
                "merge_commit_sha": None,
                "draft": bool(body.get("draft", False)),
                "created_at": _now(),
            }
            state.pulls[full_name].append(pr)
        return JSONResponse(pull_json(full_name, pr, full=True), status_code=201)

    # --- git smart HTTP, through the real git http-backend --------------------------------------

    @app.api_route("/{owner}/{repo_git}/{rest:path}", methods=["GET", "POST"])
    async def git_http(owner: str, repo_git: str, rest: str, request: Request) -> Response:
        if not repo_git.endswith(".git") or f"{owner}/{repo_git[:-4]}" not in state.repos:
            return Response("Repository not found.\n", status_code=404)
        login = _basic_login(state, request.headers.get("authorization", ""))
        if login is None:
            return Response(
                "Invalid username or token.\n",
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="GitHub"'},
            )
        body = await request.body()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_PROJECT_ROOT": str(state.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": f"/{owner}/{repo_git}/{rest}",
            "QUERY_STRING": request.url.query,
            "REQUEST_METHOD": request.method,
            "CONTENT_TYPE": request.headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_CONTENT_ENCODING": request.headers.get("content-encoding", ""),
            "GIT_PROTOCOL": request.headers.get("git-protocol", ""),
            "REMOTE_USER": login,  # enables receive-pack
            "REMOTE_ADDR": "127.0.0.1",
        }
        # A blocking run in a thread: uvicorn's uvloop, in a non-main thread, is unreliable with
        # subprocess pipes.
        done = await asyncio.to_thread(
            subprocess.run, ["git", "http-backend"], input=body, env=env, capture_output=True
        )
        out = done.stdout
        separator = b"\r\n\r\n" if b"\r\n\r\n" in out else b"\n\n"
        head, _, payload = out.partition(separator)
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers[key] = value.strip()
        return Response(payload, status_code=status, headers=headers)

    return app


def _basic_login(state: GitHubStandIn, header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        _user, _, token = base64.b64decode(value.strip()).decode().partition(":")
    except ValueError:
        return None
    return state.tokens.get(token)
