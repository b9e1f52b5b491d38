"""The GitHub stand-in served for a test, and the token it accepts (shared by the test files)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from testing.standins.github_api import GitHubStandIn, create_app
from testing.standins.server import serve

TOKEN = "ghp_standin0123456789abcdefSECRET"
TOKEN_ENV = "ORCHESTRATOR_TEST_GITHUB_TOKEN"
LOGIN = "octocat"
ORG = "acme"


@contextlib.contextmanager
def github_standin(root: Path) -> Iterator[GitHubStandIn]:
    """GitHub at ``state.base_url`` (API under ``/api/v3``), accepting ``TOKEN`` as octocat, a
    member of the organisation ``acme``; its repositories are bare ones under ``root``."""
    state = GitHubStandIn(root=root, tokens={TOKEN: LOGIN}, orgs={ORG})
    state.root.mkdir(parents=True)
    with serve(create_app(state)) as url:
        state.base_url = url
        yield state
