"""Every document a command writes validates against the JSON Schema ``landscape schema``
prints (Draft 2020-12): each registered command's real report, inspect's, a batch line (ok and
error) and an interrupted report; and the schema is the registry's, so a command registered in
one place is in the CLI, the API and the schema."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from contextlib import contextmanager
from typing import Annotated

import jsonschema
import pytest
import typer.main
from helpers.cheap_runs import CHECKPOINTS, ROOT, SHARED, cheap, cheap_args
from helpers.runners import invoke

import landscape_cli
from landscape_cli import runner
from landscape_cli.cli.app import build_app
from landscape_cli.commands import COMMANDS, Command
from landscape_cli.errors import Interrupted
from landscape_cli.options import Option, RunOptions
from landscape_cli.results.base import Result, reported


def _schema(app=None) -> dict:
    result = invoke(["schema"], app=app or build_app())
    assert result.returncode == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = _schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(validator, doc: dict) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


def _report(name: str, **extra) -> dict:
    checkpoints, options = cheap(name)
    target = checkpoints if COMMANDS[name].many else checkpoints[0]
    return landscape_cli.analyze(name, target, **SHARED, **options, **extra).to_dict()


# ----------------------------------------------------------------------------- real documents


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_s_real_report_validates(validator, name):
    doc = _report(name)
    assert doc["command"] == name and doc["status"] == "ok"
    assert _errors(validator, doc) == []


def test_inspect_s_report_validates(validator):
    result = invoke(["inspect", CHECKPOINTS[0], "--json"], app=build_app())
    assert result.returncode == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["command"] == "inspect" and doc["results"]["n_params"] == 2410
    assert _errors(validator, doc) == []


def test_batch_lines_ok_and_error_validate(validator, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(CHECKPOINTS[0].read_bytes()[:1000])
    out = tmp_path / "lines.jsonl"
    result = invoke(["batch", CHECKPOINTS[0], broken, "--command", "spectrum",
                     *cheap_args("spectrum")[2:], "-c", CHECKPOINTS[0].parent / "landscape.yaml",
                     "-o", out, "-q"], app=build_app())
    assert result.returncode == 2, result.output  # the broken checkpoint
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["status"] for line in lines] == ["ok", "error"]
    assert isinstance(lines[0]["batch_key"], str) and isinstance(lines[1]["batch_key"], str)
    for line in lines:
        assert _errors(validator, line) == []
    # an error line is exactly that: without its message it is neither a line nor a report
    del lines[1]["error"]
    assert _errors(validator, lines[1])


def test_an_interrupted_report_validates(validator):
    """SIGINT during a trace: the report of the estimate so far, ``status: interrupted``."""

    @contextmanager
    def interrupt_at_the_second_step(label, total):
        calls = []

        def update(completed, note=""):
            calls.append(completed)
            if len(calls) == 2:
                raise Interrupted(signal.SIGINT, "SIGINT")

        yield update

    checkpoints, options = cheap("trace")
    prepared = runner.prepare("trace", checkpoints[0], RunOptions.of(SHARED),
                              {**options, "max_hvps": 200, "rtol": 1e-9})
    report, interrupted = runner.execute(prepared, progress=interrupt_at_the_second_step)
    doc = report.to_dict()
    assert interrupted is not None and doc["status"] == "interrupted"
    assert doc["results"]["converged"] is False and doc["results"]["probes"] > 0
    assert _errors(validator, doc) == []


# ----------------------------------------------------------------------------- what it refuses


def test_a_wrong_type_for_a_required_key_fails(validator):
    doc = _report("spectrum")
    for broken, where in (({"top_eigenvalues": "many"}, "top_eigenvalues"),
                          ({"top_eigenvalues": None}, "top_eigenvalues")):
        wrong = json.loads(json.dumps(doc))
        wrong["results"].update(broken)
        assert any(where in error for error in _errors(validator, wrong)), broken
    wrong = json.loads(json.dumps(doc))
    wrong["settings"]["seed"] = "zero"
    assert _errors(validator, wrong)
    missing = json.loads(json.dumps(doc))
    del missing["results"]["top_residuals"]
    assert _errors(validator, missing)
    unknown = {**doc, "command": "no-such-command"}
    assert _errors(validator, unknown)


def test_a_renamed_contract_key_fails(validator):
    doc = _report("trace")
    doc["results"]["std_error"] = doc["results"].pop("stderr")
    assert _errors(validator, doc)


def test_the_schema_describes_every_registered_command():
    schema = _schema()
    reports = schema["oneOf"][0]
    assert set(reports["discriminator"]["mapping"]) == {*COMMANDS, "inspect"}
    assert schema["$schema"].endswith("2020-12/schema")


# ----------------------------------------------------------------------------- one registry


class Sum(Result):
    """A fake command's result: the sum of the parameters, times a factor."""

    total: float = reported(gate=True, required=True)


def fake_sum(run, factor: Annotated[float, Option("Multiply the sum.")] = 1.0) -> Sum:
    return Sum(total=factor * float(run.loaded.problem.theta0.double().sum()))


FAKE = Command(name="sum-of-weights", run=fake_sum, help="The sum of the weights.", epilog="",
               result=Sum)


def test_a_command_registered_in_one_place_is_in_the_cli_the_api_and_the_schema(monkeypatch):
    monkeypatch.setitem(COMMANDS, FAKE.name, FAKE)
    app = build_app()
    assert FAKE.name in typer.main.get_command(app).commands
    assert FAKE.name in invoke(["--help"], app=app).stdout

    api = landscape_cli.analyze(FAKE.name, CHECKPOINTS[0], factor=2.0, **SHARED)
    half = landscape_cli.analyze(FAKE.name, CHECKPOINTS[0], **SHARED)
    assert api.results["total"] == pytest.approx(2 * half.results["total"], rel=1e-12)

    ran = invoke([FAKE.name, CHECKPOINTS[0], "--factor", "2", "--set", SHARED["set"][0],
                  "--json", "--fail-if", "total>1e9"], app=app)
    assert ran.returncode == 0, ran.output
    doc = json.loads(ran.stdout)
    assert doc["results"]["total"] == api.results["total"]
    assert doc["gates"] == [{"expr": "total>1e9", "value": doc["results"]["total"], "violated": False}]

    schema = _schema(app)
    assert FAKE.name in schema["oneOf"][0]["discriminator"]["mapping"]
    validator = jsonschema.Draft202012Validator(schema)
    assert _errors(validator, doc) == []
    doc["results"]["total"] = "large"
    assert _errors(validator, doc)


@pytest.mark.parametrize("args", [["schema"], ["--help"], ["--version"]])
def test_schema_help_and_version_start_without_torch(args):
    """The registry and the schema are torch-free: these answer at once."""
    code = ("import sys\nfrom landscape_cli.cli.entry import main\n"
            f"sys.argv = ['landscape', *{args!r}]\n"
            "try:\n    main()\nexcept SystemExit as end:\n    assert end.code in (0, None), end.code\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert ran.returncode == 0 and ran.stdout, ran.stderr
