"""The demo's script for the ``scripted`` agent: a small feature and its test, really written.

Without a model API key ``orchestrator demo`` runs the deterministic scripted agent
(deploy/images/agents/scripted/scripted_agent.py documents the script format). Its one round
adds ``GET /greet/<name>`` to the project template's HTTP service (deploy/templates/service):
a module with the feature, its unittest tests, and ``app/server.py`` as the scaffold renders it
with the feature wired into its ``route()``; then it commits. The Tester's ``make test`` must
pass on it: tests/cli/test_demo.py plays the round on a freshly scaffolded project to keep it so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEMO_SPEC = (
    "Add a GET /greet/<name> endpoint to the HTTP service that answers "
    '{"message": "Hello, <name>!"}, with unittest tests for it.'
)

GREETING_MODULE = '''\
"""Greetings: GET /greet/<name> answers {"message": "Hello, <name>!"}."""

from __future__ import annotations

from http import HTTPStatus
from urllib.parse import unquote

PREFIX = "/greet/"


def greet(name: str) -> str:
    return f"Hello, {name}!"


def greet_route(path: str) -> tuple[int, dict] | None:
    """The answer to a /greet/<name> request, or None when the path is not one."""
    if not path.startswith(PREFIX):
        return None
    name = unquote(path[len(PREFIX) :]).strip()
    if not name or "/" in name:
        return HTTPStatus.BAD_REQUEST, {"error": "say whom to greet: /greet/<name>"}
    return HTTPStatus.OK, {"message": greet(name)}
'''

GREETING_TESTS = """\
import json
import threading
import unittest
import urllib.request

from app.greeting import greet
from app.server import make_server, route


class GreetTest(unittest.TestCase):
    def test_greets_by_name(self):
        self.assertEqual(greet("Ada"), "Hello, Ada!")

    def test_the_route_answers(self):
        self.assertEqual(route("GET", "/greet/Ada"), (200, {"message": "Hello, Ada!"}))

    def test_a_name_is_needed(self):
        status, _ = route("GET", "/greet/")
        self.assertEqual(status, 400)

    def test_greets_over_http(self):
        server = make_server("127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_port}/greet/Grace%20Hopper"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                self.assertEqual(json.load(response), {"message": "Hello, Grace Hopper!"})
        finally:
            server.shutdown()
            server.server_close()


if __name__ == "__main__":
    unittest.main()
"""

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "deploy" / "templates" / "service"
SERVER_TEMPLATE = (
    TEMPLATE_DIR / "project" / "app" / "{% if 'backend' in modules %}server.py{% endif %}.jinja"
)
# Where the feature goes into the template's app/server.py: an import, and a hook in route().
IMPORT_ANCHOR = "from app import NAME\n"
ROUTE_ANCHOR = '    if path == "/health":\n'
ROUTE_HOOK = """\
    greeting = greet_route(path)
    if greeting is not None:
        return greeting
"""


def scaffolded_server() -> str:
    """app/server.py as the scaffold stage renders it for the demo's project (the defaults)."""
    # Imported here: the CLI imports with its client dependencies only.
    import jinja2
    import yaml

    answers = yaml.safe_load((TEMPLATE_DIR / "copier.yml").read_text())
    env = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return env.from_string(SERVER_TEMPLATE.read_text()).render(port=answers["port"]["default"])


def server_with_greeting(server: str) -> str:
    """The server with GET /greet/<name> wired into its route()."""
    for anchor in (IMPORT_ANCHOR, ROUTE_ANCHOR):
        if anchor not in server:
            raise RuntimeError(f"the template's app/server.py has no {anchor!r}: update the demo")
    server = server.replace(IMPORT_ANCHOR, IMPORT_ANCHOR + "from app.greeting import greet_route\n")
    return server.replace(ROUTE_ANCHOR, ROUTE_HOOK + ROUTE_ANCHOR, 1)


# What the demo's branch holds once the scripted agent has run.
DEMO_FILES = ("app/greeting.py", "app/server.py", "tests/test_greeting.py")


def demo_script() -> dict[str, Any]:
    """The scripted agent's script: one round that writes the files, commits and reports."""
    return {
        "rounds": [
            {
                "write": [
                    {"path": "app/greeting.py", "content": GREETING_MODULE},
                    {"path": "app/server.py", "content": server_with_greeting(scaffolded_server())},
                    {"path": "tests/test_greeting.py", "content": GREETING_TESTS},
                ],
                "commit": "Add GET /greet/<name>",
                "report": "completed",
                "summary": "Added GET /greet/<name> (app/greeting.py, wired into app/server.py) "
                "and its tests (tests/test_greeting.py).",
            }
        ]
    }
