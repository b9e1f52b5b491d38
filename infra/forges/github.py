"""GitHub as the forge: repositories (plain or from a template), branch pushes, pull requests.

REST v3 through httpx against ``api_url`` (``https://api.github.com``, a GitHub Enterprise
``https://HOST/api/v3``, or the tests' stand-in). The token is given *by reference*
(``env:NAME`` or ``file:PATH``) and resolved at each call, so workflow inputs, events and logs
only ever hold the reference. A push hands the token to git through ``GIT_CONFIG_*`` variables of
that one process (an ``http.<origin>.extraheader``): never in argv, a remote URL or ``.git/config``.
The same goes for a workspace's clone: the forge registers its web origin with
``infra.git.authenticate_git`` (``infra.forges.make_forge`` does).

``GitHubForge`` has the methods of ``LocalForge`` that the activities use (``full_name_for``,
``clone_url``, ``head``, ``create``, ``push``, ``push_branch``, ``open_pull_request``,
``pull_request``, ``merge_pull_request``), so the activities take either.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel

from core.enums import PullRequestState
from core.logging import get_logger
from infra.errors import InfraError, refused
from infra.forges.base import BRANCH, DiffStat, PullRequestInfo, slugify
from infra.git import check_branch, git, git_env

log = get_logger(__name__)

DEFAULT_API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
USER_AGENT = "codegen-orchestrator"


# --- errors -------------------------------------------------------------------------------------


class GitHubError(InfraError):
    """GitHub answered with an error. The message never holds the token."""

    retryable = True

    def __init__(
        self,
        status: int,
        message: str,
        *,
        request: str = "",
        errors: list[Any] | None = None,
        documentation_url: str | None = None,
    ) -> None:
        self.status = status
        self.message = message
        self.request = request
        self.errors = errors or []
        self.documentation_url = documentation_url
        details = "; ".join(_error_text(e) for e in self.errors)
        text = f"GitHub {status} on {request}: {message}" if request else message
        super().__init__(f"{text} ({details})" if details else text)


class GitHubAuthError(GitHubError):
    """401: the token is missing, wrong or expired; or 403 without a rate limit: not allowed."""

    retryable = False


class GitHubNotFound(GitHubError):
    """404: no such repository (or the token may not see it)."""

    retryable = False


class GitHubValidationError(GitHubError):
    """422: GitHub refused the request as it is."""

    retryable = False


class PullRequestExists(GitHubValidationError):
    """422 "A pull request already exists for owner:branch"."""


class RepositoryExists(GitHubValidationError):
    """422 "name already exists on this account"."""


class MergeConflict(GitHubError):
    """405 on a merge: GitHub cannot merge the branch as it is (conflicts, or rules of the
    repository)."""

    retryable = False


class GitHubRateLimited(GitHubError):
    """403/429 from the primary or a secondary rate limit; ``retry_after`` seconds to wait."""

    retry_after: float

    def __init__(self, status: int, message: str, *, retry_after: float, **kwargs: Any) -> None:
        super().__init__(status, f"{message} (retry after {retry_after:.0f}s)", **kwargs)
        self.retry_after = retry_after


class SecretUnavailable(InfraError):
    """A secret reference that names nothing readable. Says which reference, never a value."""

    # Someone must set the secret first; retrying at once cannot help.
    retryable = False


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or error)
    return str(error)


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait, if the response is a rate limit (GitHub's documented headers)."""
    headers = response.headers
    if "retry-after" in headers:
        try:
            return max(0.0, float(headers["retry-after"]))
        except ValueError:
            return 60.0
    if headers.get("x-ratelimit-remaining") == "0":
        try:
            return max(0.0, float(headers.get("x-ratelimit-reset", "0")) - time.time())
        except ValueError:
            return 60.0
    if response.status_code == 429:
        return 60.0  # GitHub's advice for a secondary limit without headers: wait a minute
    return None


def raise_for_github(response: httpx.Response) -> None:
    if response.is_success:
        return
    request = f"{response.request.method} {response.request.url.path}"
    try:
        payload = response.json()
    except ValueError:
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    message = str(payload.get("message") or response.reason_phrase or "error")
    kwargs: dict[str, Any] = {
        "request": request,
        "errors": payload.get("errors") if isinstance(payload.get("errors"), list) else None,
        "documentation_url": payload.get("documentation_url"),
    }
    status = response.status_code
    if status in (403, 429) and (retry_after := _retry_after(response)) is not None:
        raise GitHubRateLimited(status, message, retry_after=retry_after, **kwargs)
    if status in (401, 403):
        raise GitHubAuthError(status, message, **kwargs)
    if status == 404:
        raise GitHubNotFound(status, message, **kwargs)
    if status == 422:
        texts = " ".join([message, *(_error_text(e) for e in kwargs["errors"] or [])]).lower()
        if "pull request already exists" in texts:
            raise PullRequestExists(status, message, **kwargs)
        if "already exists" in texts:
            raise RepositoryExists(status, message, **kwargs)
        raise GitHubValidationError(status, message, **kwargs)
    raise GitHubError(status, message, **kwargs)


# --- secrets by reference -----------------------------------------------------------------------


def resolve_secret(reference: str) -> str:
    """The value a reference names: ``env:NAME`` (a variable) or ``file:PATH`` (a file's text)."""
    kind, _, target = reference.partition(":")
    if kind == "env" and target:
        value = os.environ.get(target, "").strip()
        if not value:
            raise SecretUnavailable(
                f"the environment variable {target} named by {reference!r} is not set"
            )
        return value
    if kind == "file" and target:
        try:
            value = Path(target).expanduser().read_text().strip()
        except OSError as exc:
            raise SecretUnavailable(
                f"cannot read the secret file of {reference!r}: {exc.strerror}"
            ) from None
        if not value:
            raise SecretUnavailable(f"the secret file of {reference!r} is empty")
        return value
    raise SecretUnavailable(f"{reference!r} is not a secret reference (env:NAME or file:PATH)")


# --- what GitHub returns ------------------------------------------------------------------------


class Repository(BaseModel):
    full_name: str
    clone_url: str
    html_url: str
    default_branch: str = BRANCH
    private: bool = False


def pull_request_info(full_name: str, data: dict[str, Any], *, created: bool) -> PullRequestInfo:
    state = PullRequestState.open
    merged = bool(data.get("merged_at") or data.get("merged"))
    if merged:
        state = PullRequestState.merged
    elif data.get("state") == "closed":
        state = PullRequestState.closed
    return PullRequestInfo(
        repo_full_name=full_name,
        number=int(data["number"]),
        url=str(data["html_url"]),
        branch=str(data["head"]["ref"]),
        base=str(data["base"]["ref"]),
        title=str(data.get("title") or ""),
        body=str(data.get("body") or ""),
        head_sha=data["head"].get("sha"),
        diff_stat=DiffStat(
            files_changed=int(data.get("changed_files") or 0),
            insertions=int(data.get("additions") or 0),
            deletions=int(data.get("deletions") or 0),
        ),
        state=state,
        # GitHub names a test merge's commit while the pull request is open: only a merge's own.
        merge_commit_sha=data.get("merge_commit_sha") if merged else None,
        merged_at=data.get("merged_at") if merged else None,
        created=created,
    )


def _split(full_name: str) -> tuple[str, str]:
    owner, _, name = full_name.partition("/")
    if not owner or not name or "/" in name:
        raise ValueError(f"{full_name!r} is not a repository name of the form owner/name")
    return owner, name


# --- the adapter --------------------------------------------------------------------------------


class GitHubForge:
    """Repositories and pull requests on GitHub, as the token of ``token_ref`` may make them.

    ``default_owner`` is the user or organisation new repositories belong to; ``template`` an
    ``owner/name`` template repository new repositories are generated from (else they start empty).
    """

    def __init__(
        self,
        token_ref: str,
        *,
        default_owner: str,
        api_url: str = DEFAULT_API_URL,
        template: str | None = None,
        private: bool = True,
        timeout: float = 30.0,
        resolver: Callable[[str], str] = resolve_secret,
        generate_timeout: float = 120.0,
    ) -> None:
        self.token_ref = token_ref
        self.default_owner = default_owner
        self.api_url = api_url.rstrip("/")
        self.template = template
        self.private = private
        self.timeout = timeout
        self.resolver = resolver
        self.generate_timeout = generate_timeout
        self._login: str | None = None

    # --- HTTP ---------------------------------------------------------------------------------

    def _token(self) -> str:
        return self.resolver(self.token_ref)

    def _client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_url,
            timeout=self.timeout,
            headers={
                "Authorization": f"Bearer {self._token()}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": USER_AGENT,
            },
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        with self._client() as client:
            response = client.request(method, path, **kwargs)
        raise_for_github(response)
        return response.json() if response.content else None

    # --- repositories -------------------------------------------------------------------------

    def full_name_for(self, project_name: str) -> str:
        return f"{self.default_owner}/{slugify(project_name)}"

    def login(self) -> str:
        """The login of the token's user (GET /user)."""
        if self._login is None:
            self._login = str(self._request("GET", "/user")["login"])
        return self._login

    def repository(self, full_name: str) -> Repository | None:
        owner, name = _split(full_name)
        try:
            return Repository.model_validate(self._request("GET", f"/repos/{owner}/{name}"))
        except GitHubNotFound:
            return None

    def create_repository(
        self, full_name: str, *, description: str = "", template: str | None = None
    ) -> Repository:
        """Create ``full_name`` (from ``template``, else empty), or return it if it exists."""
        existing = self.repository(full_name)
        if existing is not None:
            return existing
        owner, name = _split(full_name)
        template = template or self.template
        if template:
            template_owner, template_name = _split(template)
            path = f"/repos/{template_owner}/{template_name}/generate"
            body: dict[str, Any] = {
                "owner": owner,
                "name": name,
                "description": description,
                "private": self.private,
                "include_all_branches": False,
            }
        else:
            personal = owner.lower() == self.login().lower()
            path = "/user/repos" if personal else f"/orgs/{owner}/repos"
            body = {"name": name, "description": description, "private": self.private}
        try:
            created = Repository.model_validate(self._request("POST", path, json=body))
        except RepositoryExists:
            # Made by an earlier attempt whose answer was lost.
            found = self.repository(full_name)
            if found is None:
                raise
            return found
        log.info("github repository created", repository=full_name, template=template)
        return created

    def create(self, full_name: str) -> bool:
        """Create the repository unless it exists; True when it comes from the template.

        GitHub generates a repository from a template asynchronously: this waits until the
        branch is there, so the caller can read its commit.
        """
        self.create_repository(full_name)
        if not self.template:
            return False
        deadline = time.monotonic() + self.generate_timeout
        while self.head(full_name) is None:
            if time.monotonic() > deadline:
                raise GitHubError(
                    504,
                    f"{full_name} has no {BRANCH} branch {self.generate_timeout:g} s after "
                    f"its generation from {self.template}",
                )
            time.sleep(1.0)
        return True

    def clone_url(self, full_name: str) -> str:
        repository = self.repository(full_name)
        if repository is None:
            raise GitHubNotFound(404, f"no repository {full_name}", request="clone_url")
        return repository.clone_url

    def head(self, full_name: str, branch: str = BRANCH) -> str | None:
        owner, name = _split(full_name)
        try:
            found = self._request("GET", f"/repos/{owner}/{name}/branches/{branch}")
        except GitHubNotFound:
            return None
        return str(found["commit"]["sha"])

    # --- pushing ------------------------------------------------------------------------------

    @property
    def git_origin(self) -> str:
        """Where GitHub serves git: ``https://github.com/`` for ``https://api.github.com``,
        the host itself for GitHub Enterprise's ``https://HOST/api/v3``."""
        parts = urlsplit(self.api_url)
        host = parts.netloc.removeprefix("api.")
        return f"{parts.scheme}://{host}/"

    def git_auth_env(self, url: str) -> dict[str, str]:
        """git's configuration for this one process: the token as a header for this origin only."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}/"
        basic = base64.b64encode(f"x-access-token:{self._token()}".encode()).decode()
        return {
            **git_env(),
            "GIT_CONFIG_COUNT": "3",
            "GIT_CONFIG_KEY_0": f"http.{origin}.extraheader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
            # No helper may offer (or store) another credential.
            "GIT_CONFIG_KEY_1": "credential.helper",
            "GIT_CONFIG_VALUE_1": "",
            # Pushes run in an agent's workspace: none of its hooks may run with the token around.
            "GIT_CONFIG_KEY_2": "core.hooksPath",
            "GIT_CONFIG_VALUE_2": os.devnull,
            "GIT_ASKPASS": "true",
        }

    def _push(self, full_name: str, worktree: Path, refspec: str) -> str:
        url = self.clone_url(full_name)
        pushed = subprocess.run(
            ["git", "push", "--porcelain", url, refspec],
            cwd=worktree,
            env=self.git_auth_env(url),
            capture_output=True,
            text=True,
            check=False,
        )
        if pushed.returncode != 0:
            error = pushed.stderr.strip()
            if "403" in error or "401" in error or "Authentication failed" in error:
                raise GitHubAuthError(401, f"git push to {full_name} was refused: {error}")
            raise RuntimeError(f"git push to {full_name} failed: {error}")
        return pushed.stdout

    def push(self, full_name: str, worktree: Path, branch: str = BRANCH) -> bool:
        """Push HEAD to ``branch`` unless the branch exists; True when this push created it."""
        if self.head(full_name, branch) is not None:
            return False
        output = self._push(full_name, worktree, f"HEAD:refs/heads/{check_branch(branch)}")
        return any(line.startswith("*\t") for line in output.splitlines())

    def push_branch(self, full_name: str, worktree: Path, branch: str) -> str:
        """Push HEAD to ``branch`` (forced: a task's branch is its own); returns the pushed sha."""
        self._push(full_name, worktree, f"+HEAD:refs/heads/{check_branch(branch)}")
        sha = git("rev-parse", "HEAD", cwd=worktree).stdout.strip()
        log.info("branch pushed", repository=full_name, branch=branch, commit_sha=sha)
        return sha

    # --- pull requests ------------------------------------------------------------------------

    def find_pull_request(self, full_name: str, branch: str) -> PullRequestInfo | None:
        """The pull request of ``branch`` (open, else the newest closed one), if there is one."""
        owner, name = _split(full_name)
        found = self._request(
            "GET",
            f"/repos/{owner}/{name}/pulls",
            params={"head": f"{owner}:{branch}", "state": "all", "per_page": 100},
        )
        if not found:
            return None
        chosen = next((pr for pr in found if pr.get("state") == "open"), found[0])
        # The list leaves out the diff counts; the pull request itself has them.
        full = self._request("GET", f"/repos/{owner}/{name}/pulls/{chosen['number']}")
        return pull_request_info(full_name, full, created=False)

    def open_pull_request(
        self, full_name: str, branch: str, base: str = BRANCH, *, title: str, body: str = ""
    ) -> PullRequestInfo:
        """Open the pull request of ``branch`` into ``base``; the existing one if already open."""
        existing = self.find_pull_request(full_name, branch)
        if existing is not None:
            return existing
        owner, name = _split(full_name)
        try:
            created = self._request(
                "POST",
                f"/repos/{owner}/{name}/pulls",
                json={"title": title, "head": branch, "base": base, "body": body},
            )
        except PullRequestExists:
            # Another attempt opened it between our lookup and our request.
            found = self.find_pull_request(full_name, branch)
            if found is None:
                raise
            return found
        log.info("github pull request opened", repository=full_name, number=created["number"])
        return pull_request_info(full_name, created, created=True)

    def pull_request(self, full_name: str, number: int) -> PullRequestInfo:
        """The pull request as GitHub has it now: open, merged (with its merge commit), closed."""
        owner, name = _split(full_name)
        return pull_request_info(
            full_name, self._request("GET", f"/repos/{owner}/{name}/pulls/{number}"), created=False
        )

    def merge_pull_request(self, full_name: str, number: int) -> PullRequestInfo:
        """Merge it with a merge commit (``PUT .../pulls/{number}/merge``, method ``merge``) of
        the head GitHub showed us, so a push meanwhile fails the merge (409) rather than merging
        what nobody saw; one already merged is returned as it is."""
        owner, name = _split(full_name)
        current = self.pull_request(full_name, number)
        if current.state == PullRequestState.merged:
            return current
        if current.state == PullRequestState.closed:
            raise refused(
                f"{full_name} #{number} is closed: it cannot be merged", "PullRequestClosed"
            )
        body = {"merge_method": "merge", "sha": current.head_sha}
        try:
            self._request("PUT", f"/repos/{owner}/{name}/pulls/{number}/merge", json=body)
        except GitHubError as exc:
            if exc.status != 405:
                raise
            merged = self.pull_request(full_name, number)
            if merged.state == PullRequestState.merged:
                return merged  # merged by an attempt whose answer was lost
            raise MergeConflict(
                exc.status, exc.message, request=exc.request, errors=exc.errors
            ) from None
        log.info("github pull request merged", repository=full_name, number=number)
        return self.pull_request(full_name, number)
