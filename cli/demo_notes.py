"""The demo's feature for the ``app`` template's backend, played by the scripted agent in two
rounds.

Round 1 installs a third-party package (``uv add python-slugify``, resolved against PyPI, which
changes ``pyproject.toml`` and ``uv.lock``) and adds notes stored in PostgreSQL: a model, its
Alembic migration, ``POST /notes`` and ``GET /notes/{slug}``, and their pytest tests. Its lookup
has a bug (by title instead of slug), so ``test_a_note_is_found_by_its_slug`` fails; round 2 fixes
the route. The files are the template's own, extended, so the project's migration check and
linters still pass once the bug is gone. Without a model API key ``orchestrator demo`` plays it;
tests/workflows/test_engineering_app.py runs it through the whole pipeline.
"""

from __future__ import annotations

from typing import Any

from core.paths import APP_TEMPLATE_DIR

PACKAGE = "python-slugify==8.0.4"
SPEC = (
    "Add notes stored in the database: POST /notes with a title and a body answers 201 with "
    "the note and its slug (made with python-slugify); GET /notes/{slug} answers the note, or "
    "404. With pytest tests."
)
FAILING_TEST = "tests.test_notes.test_a_note_is_found_by_its_slug"
PROJECT = APP_TEMPLATE_DIR / "project"
MODELS = PROJECT / "app" / "{% if 'backend' in modules %}models.py{% endif %}"
SCHEMAS = PROJECT / "app" / "{% if 'backend' in modules %}schemas.py{% endif %}"
API = PROJECT / "app" / "{% if 'backend' in modules %}api.py{% endif %}.jinja"

NOTE_MODEL = '''

class Note(Base):
    """A note, found by the slug of its title."""

    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(200), unique=True)
    body: Mapped[str] = mapped_column(Text, default="")
'''

NOTE_SCHEMAS = """

class NoteCreate(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(default="", max_length=10_000)


class NoteRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    slug: str
    body: str
"""

MIGRATION = '''"""Create notes

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "notes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("slug", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notes")),
        sa.UniqueConstraint("slug", name=op.f("uq_notes_slug")),
    )


def downgrade() -> None:
    op.drop_table("notes")
'''

ROUTE = '''"""Notes: created with a title, found by its slug."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from slugify import slugify
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import get_session
from app.models import Note
from app.schemas import NoteCreate, NoteRead

router = APIRouter(prefix="/notes", tags=["notes"])
SessionDep = Annotated[Session, Depends(get_session)]


@router.post("", response_model=NoteRead, status_code=status.HTTP_201_CREATED)
def create_note(body: NoteCreate, session: SessionDep) -> Note:
    note = Note(title=body.title, slug=slugify(body.title), body=body.body)
    session.add(note)
    session.commit()
    session.refresh(note)
    return note


@router.get("/{slug}", response_model=NoteRead, responses={404: {"description": "No such note"}})
def read_note(slug: str, session: SessionDep) -> Note:
    note = session.scalars(select(Note).where(Note.LOOKUP == slug)).first()
    if note is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no note {slug}")
    return note
'''

TESTS = """from __future__ import annotations

from fastapi.testclient import TestClient


def test_a_note_gets_the_slug_of_its_title(client: TestClient) -> None:
    created = client.post("/notes", json={"title": "Hello, World!", "body": "first"})
    assert created.status_code == 201
    assert created.json()["slug"] == "hello-world"


def test_a_note_is_found_by_its_slug(client: TestClient) -> None:
    note = client.post("/notes", json={"title": "Shopping list", "body": "milk"}).json()
    found = client.get("/notes/shopping-list")
    assert found.status_code == 200, found.text
    assert found.json() == note
    assert client.get("/notes/nothing-here").status_code == 404
"""


def _route(lookup: str) -> str:
    return ROUTE.replace("Note.LOOKUP", f"Note.{lookup}")


def _api(project_name: str) -> str:
    import jinja2  # here: the CLI starts without it

    api = jinja2.Template(API.read_text(), keep_trailing_newline=True).render(
        project_name=project_name
    )
    api = api.replace("import health, items", "import health, items, notes")
    return api.replace(
        "    app.include_router(items.router)\n",
        "    app.include_router(items.router)\n    app.include_router(notes.router)\n",
    )


def notes_script(project_name: str) -> dict[str, Any]:
    """The scripted agent's two rounds for a project scaffolded from the ``app`` template."""
    first = [
        {"path": "app/models.py", "content": MODELS.read_text() + NOTE_MODEL},
        {"path": "app/schemas.py", "content": SCHEMAS.read_text() + NOTE_SCHEMAS},
        {"path": "migrations/versions/0002_create_notes.py", "content": MIGRATION},
        {"path": "app/routes/notes.py", "content": _route("title")},
        {"path": "app/api.py", "content": _api(project_name)},
        {"path": "tests/test_notes.py", "content": TESTS},
    ]
    return {
        "rounds": [
            {
                "write": first,
                "run": f"uv add --quiet '{PACKAGE}'",
                "report": "completed",
                "summary": "Added notes with slugs. uv add said: {output}",
            },
            {
                "write": {"path": "app/routes/notes.py", "content": _route("slug")},
                # What it was told, so a test can see the failing test reached it by name.
                "run": 'printf "%s" "$SCRIPTED_AGENT_PROMPT"',
                "report": "completed",
                "summary": "Notes are found by their slug. I was told: {output}",
            },
        ]
    }
