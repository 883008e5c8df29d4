"""``landscape schema``: print the JSON Schema of the report."""

from __future__ import annotations

import json

import typer

from landscape_cli.commands import COMMANDS, result_types
from landscape_cli.report.output import emit


def register_schema(app: typer.Typer) -> None:
    @app.command("schema", help="Print the JSON Schema of the report every command emits "
                 "(and of a batch line).",
                 epilog="Example:\n\n  landscape schema > landscape-report.schema.json")
    def schema_command() -> None:
        from landscape_cli.report.schema import json_schema  # builds pydantic models: 0.1 s

        emit(json.dumps(json_schema(result_types(), COMMANDS), indent=2), None)
