"""``orchestrator contracts``: the public Redis contract, as JSON Schema."""

from __future__ import annotations

import typer

from cli.output import JsonOption, Output, command

app = typer.Typer(help="The queue contracts.", no_args_is_help=True)


@command(app, "schema")
def schema(json_output: JsonOption = False) -> None:
    """JSON Schema of every queue's message and of every result."""
    from core.contracts import json_schemas

    out = Output(json_output)
    schemas = json_schemas()

    def render() -> None:
        from rich.table import Table

        out.console.print(f"contract version {schemas['version']}: {schemas['wire_format']}")
        table = Table("queue", "message", "fields")
        for queue, model in schemas["queues"].items():
            variants = [v.get("$ref", "").rsplit("/", 1)[-1] for v in model.get("oneOf", [])]
            title = model.get("title") or " | ".join(variants)
            fields = ", ".join(model.get("properties", {})) or "(one of the messages named)"
            table.add_row(queue, title, fields)
        out.console.print(table)
        out.console.print("Results: " + ", ".join(schemas["results"]))
        out.console.print("The full schemas: orchestrator contracts schema --json")

    out.emit(schemas, render)
