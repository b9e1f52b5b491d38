"""Where the files that ship with the code are: playbooks, Worker image recipes, project
templates, the Product Owner's instructions (all under ``deploy/``)."""

from __future__ import annotations

from pathlib import Path

from core.enums import ProjectTemplate

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_DIR = REPO_ROOT / "deploy"
TEMPLATES_DIR = DEPLOY_DIR / "templates"
# The template new repositories start from, unless ORCHESTRATOR_TEMPLATE_DIR names another.
SERVICE_TEMPLATE_DIR = TEMPLATES_DIR / "service"
# The real-application template (FastAPI/PostgreSQL backend, aiogram bot, uv lockfiles).
APP_TEMPLATE_DIR = TEMPLATES_DIR / "app"
# A project that names its template gets it; one that does not gets the deployment's default.
TEMPLATE_DIRS = {
    ProjectTemplate.service: SERVICE_TEMPLATE_DIR,
    ProjectTemplate.app: APP_TEMPLATE_DIR,
}
