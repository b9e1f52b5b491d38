"""Where the files that ship with the code are: playbooks, Worker image recipes, project
templates, the Product Owner's instructions (all under ``deploy/``)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_DIR = REPO_ROOT / "deploy"
TEMPLATES_DIR = DEPLOY_DIR / "templates"
# The template new repositories start from, unless ORCHESTRATOR_TEMPLATE_DIR names another.
SERVICE_TEMPLATE_DIR = TEMPLATES_DIR / "service"
# The real-application template (FastAPI/PostgreSQL backend, aiogram bot, uv lockfiles), for the
# pipeline once deploys install dependencies.
APP_TEMPLATE_DIR = TEMPLATES_DIR / "app"
