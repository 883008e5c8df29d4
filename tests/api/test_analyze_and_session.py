"""The Python API (issue 18.3, DESIGN §10): ``landscape_cli.analyze`` returns the report the CLI
prints, raises the errors the CLI prints, and a ``Session`` loads many checkpoints onto one
model with the numbers of separate runs. The README's notebook example runs as printed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers.samples import MLP_CKPT, ROOT

import landscape_cli
from landscape_cli.errors import LandscapeError

MLP_CONFIG = ROOT / "configs" / "mlp.yaml"
SMALL = ["data.max_samples=300"]
CASES = [
    ("spectrum", {"top": 3, "bottom": 1}, ["--top", "3", "--bottom", "1"]),
    ("trace", {"max_hvps": 60, "method": "hutchinson"}, ["--max-hvps", "60", "--method", "hutchinson"]),
    ("classify-critical-point", {"runs": 2, "steps": 10}, ["--runs", "2", "--steps", "10"]),
]


@pytest.mark.parametrize("command, options, flags", CASES, ids=[c[0] for c in CASES])
def test_api_returns_the_results_the_cli_prints(cli, command, options, flags):
    code, doc, _ = cli(command, MLP_CKPT, "-c", MLP_CONFIG, "--set", SMALL[0], "--dtype", "float64",
                       "--json", *flags)
    assert code == 0
    report = landscape_cli.analyze(command, MLP_CKPT, config=MLP_CONFIG, set=SMALL,
                                   dtype="float64", **options)
    assert report.status == "ok" and report.command == command
    assert report.results == doc["results"]
    assert report.settings["options"] == doc["settings"]["options"]
    assert {k: v for k, v in report.settings["options"].items() if k in options} == options
    assert report.to_dict().keys() == doc.keys()
    assert report.result is not None and report.result.results().keys() <= report.results.keys()


def _cli_error(cli, *args) -> str:
    code, doc, result = cli(*args)
    assert code == 2 and doc is None
    line = result.stderr.strip()
    assert line.startswith("error: ") and "\n" not in line
    return line.removeprefix("error: ")


@pytest.mark.parametrize("args, api", [
    (["spectrum", "missing.pt", "-c", MLP_CONFIG], lambda: landscape_cli.analyze(
        "spectrum", "missing.pt", config=MLP_CONFIG)),
    (["spectrum", MLP_CKPT, "-c", MLP_CONFIG, "--top", "0"], lambda: landscape_cli.analyze(
        "spectrum", MLP_CKPT, config=MLP_CONFIG, top=0)),
    (["trace", MLP_CKPT, "-c", MLP_CONFIG, "--rtol", "nan"], lambda: landscape_cli.analyze(
        "trace", MLP_CKPT, config=MLP_CONFIG, rtol=float("nan"))),
    (["spectrum", MLP_CKPT, "-c", MLP_CONFIG, "--set", "data.batch_size=-3"],
     lambda: landscape_cli.analyze("spectrum", MLP_CKPT, config=MLP_CONFIG, set=["data.batch_size=-3"])),
    (["spectrum", MLP_CKPT, "-c", MLP_CONFIG, "--fail-if", "sharpness>1"],
     lambda: landscape_cli.analyze("spectrum", MLP_CKPT, config=MLP_CONFIG, fail_if=["sharpness>1"])),
], ids=["missing-checkpoint", "top-0", "rtol-nan", "bad-config-value", "unknown-gate"])
def test_bad_input_raises_the_error_the_cli_prints(cli, args, api):
    printed = _cli_error(cli, *args)
    with pytest.raises(LandscapeError) as raised:
        api()
    assert str(raised.value) == printed


def test_unknown_command_and_option_are_named():
    with pytest.raises(LandscapeError, match="no command named 'spectra'"):
        landscape_cli.analyze("spectra", MLP_CKPT, config=MLP_CONFIG)
    with pytest.raises(LandscapeError, match="--topp: no such option"):
        landscape_cli.analyze("spectrum", MLP_CKPT, config=MLP_CONFIG, topp=3)


def test_a_session_loads_many_checkpoints_with_the_numbers_of_separate_runs():
    """One model and one dataset for three checkpoints: each report equals a fresh run's, and
    a key the next checkpoint lacks would not keep the previous one's value (weights swap)."""
    from landscape_cli.config import load_config
    from landscape_cli.loading.assemble import LoadOptions
    from landscape_cli.session import Session

    paths = [MLP_CKPT.parent / f"seed{s}_epoch{e}.pt" for s, e in ((0, "001"), (1, "100"), (0, "100"))]
    config = load_config(MLP_CONFIG, [*SMALL, "dtype=float64"])
    session = Session(config, LoadOptions())
    shared = {"config": MLP_CONFIG, "set": SMALL, "dtype": "float64", "top": 2}
    reused = [landscape_cli.analyze("spectrum", p, session=session, **shared) for p in paths]
    fresh = [landscape_cli.analyze("spectrum", p, **shared) for p in paths]
    for a, b in zip(reused, fresh):
        assert a.results == b.results
        assert a.checkpoint["sha256"] == b.checkpoint["sha256"]
    assert len({r.results["loss"] for r in reused}) == 3


def test_total_time_counts_from_the_run_not_from_the_import():
    report = landscape_cli.analyze("spectrum", MLP_CKPT, config=MLP_CONFIG, set=SMALL, top=1)
    assert 0 < report.cost["wall_s"] <= report.cost["total_s"] < 60


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_notebook_example_runs(tmp_path, monkeypatch):
    blocks = _python_blocks((ROOT / "README.md").read_text())
    assert blocks, "the README shows the Python API"
    monkeypatch.chdir(ROOT)
    notebook = {"__name__": "readme"}  # one namespace for every cell, as in a notebook
    for block in blocks:
        exec(compile(block, "README.md", "exec"), notebook)


def test_import_is_light():
    """``import landscape_cli`` and the CLI's app do not import torch (instant --help)."""
    import subprocess
    import sys

    code = ("import sys, landscape_cli, landscape_cli.cli.app, landscape_cli.commands, "
            "landscape_cli.options; assert 'torch' not in sys.modules, 'torch imported'")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(ROOT))
    assert ran.returncode == 0, ran.stderr


def test_the_trace_command_offers_every_estimator():
    from landscape_cli.analyses.trace import ESTIMATORS
    from landscape_cli.commands.trace import METHODS

    assert sorted(METHODS) == sorted(ESTIMATORS)
