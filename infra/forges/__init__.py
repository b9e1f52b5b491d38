"""The forge the settings choose: local bare repositories (the default) or GitHub.

One forge per worker: the scaffold activity creates repositories on it, the pull request activity
pushes branches to it and opens pull requests there.
"""

from __future__ import annotations

from core.settings import Settings
from infra.forges.github import GitHubForge
from infra.forges.local import LocalForge
from infra.git import authenticate_git


def make_forge(settings: Settings) -> LocalForge | GitHubForge:
    """The settings' forge. GitHub's token stays a reference, resolved at each use."""
    if settings.forge == "local":
        return LocalForge(settings.forge_dir)
    if not (settings.github_owner and settings.github_token_ref):
        # Settings() refuses this already; a Settings built some other way may not have.
        raise ValueError(
            "ORCHESTRATOR_FORGE=github needs ORCHESTRATOR_GITHUB_OWNER and "
            "ORCHESTRATOR_GITHUB_TOKEN_REF"
        )
    forge = GitHubForge(
        settings.github_token_ref,
        default_owner=settings.github_owner,
        api_url=settings.github_api_url,
        template=settings.github_template,
        private=settings.github_private,
    )
    # A task's workspace is cloned by plain git (activities/engineering.py): over HTTPS, from a
    # private repository, it needs the token the same way the forge's own pushes get it.
    authenticate_git(forge.git_origin, forge.git_auth_env)
    return forge
