"""Every command's JSON validates against the schema `landscape schema` prints."""

from __future__ import annotations

import json

import pytest
from conftest import MLP_CKPT
from pydantic import ValidationError

from landscape_cli.report.schema import Report

COMMANDS = {
    "spectrum": ["--top", "2", "--bottom", "1", "--density", "--runs", "2", "--steps", "10"],
    "trace": ["--rtol", "0.2"],
    "classify-critical-point": ["--runs", "2", "--steps", "10", "--max-hvps", "40"],
    "inspect": [],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_emits_a_valid_report(cli, command):
    extra = [] if command == "inspect" else ["--set", "data.max_samples=100"]
    code, doc, _ = cli(command, MLP_CKPT, *COMMANDS[command], *extra, "--json")
    assert code == 0
    Report.validate_python(doc)
    schema = json.loads(cli("schema")[2].stdout)
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(doc, schema)


def test_schema_rejects_a_renamed_contract_key(cli):
    code, doc, _ = cli("trace", MLP_CKPT, "--set", "data.max_samples=100", "--rtol", "0.2", "--json")
    assert code == 0
    doc["results"]["std_error"] = doc["results"].pop("stderr")
    with pytest.raises(ValidationError, match="stderr"):
        Report.validate_python(doc)


def test_schema_command_prints_json_schema(cli):
    code, _, result = cli("schema")
    schema = json.loads(result.stdout)
    assert code == 0 and schema["$schema"].endswith("2020-12/schema")
    assert {"SpectrumReport", "TraceReport", "CriticalReport", "InspectReport"} <= set(schema["$defs"])
