"""``orchestrator``: the CLI a Product Owner agent (and a person) drives; a thin API client.

Exit codes: 0 ok, 1 failed task or not allowed, 2 usage, 3 not found, 4 cannot reach the API.
"""

from __future__ import annotations

import typer

from cli import contracts, engineering, images, pr, project, stack, task
from cli.demo import demo
from cli.output import command

app = typer.Typer(
    name="orchestrator",
    help="codegen-orchestrator: durable engineering pipelines on Temporal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stack.register(app)
app.add_typer(project.app, name="project")
app.add_typer(engineering.app, name="engineering")
app.add_typer(task.app, name="task")
app.add_typer(contracts.app, name="contracts")
app.add_typer(images.app, name="images")
app.add_typer(pr.app, name="pr")
command(app, "demo")(demo)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
