"""Every registered command, run cheaply on the sample MLP: the tests that must cover each
command (the schema, write errors) are parametrised from the registry through ``cheap``, so a
command registered without an entry here fails them until it has one."""

from __future__ import annotations

from pathlib import Path

from helpers.samples import ROOT
from landscape_cli.commands import COMMANDS

MLP_DIR = ROOT / "sample_checkpoints" / "mlp"
#: two checkpoints of the sample MLP; one-checkpoint commands take the first
CHECKPOINTS = [MLP_DIR / "seed0_epoch100.pt", MLP_DIR / "seed1_epoch100.pt"]
#: the shared options of every cheap run (100 samples)
SHARED = {"set": ["data.max_samples=100"]}

#: each analysis command's own options that make it take a fraction of a second
OPTIONS: dict[str, dict[str, object]] = {
    "spectrum": {"top": 1, "max_hvps": 30},
    "trace": {"max_hvps": 20},
    "sharpness": {"measures": "lambda_max,grad_norm"},
    "interpolate": {"alphas": "0:1:3"},
    "classify-critical-point": {"runs": 2, "steps": 10, "max_hvps": 40},
}


def cheap(name: str) -> tuple[list[Path], dict[str, object]]:
    """The checkpoints and the command's own options of a cheap run of ``name``."""
    assert name in OPTIONS, f"{name}: registered, but tests/helpers/cheap_runs.py has no cheap options for it"
    return CHECKPOINTS[:2 if COMMANDS[name].many else 1], OPTIONS[name]


def cheap_args(name: str) -> list[str]:
    """``landscape NAME ...``'s arguments for a cheap run of ``name`` (``cheap``)."""
    checkpoints, options = cheap(name)
    flags = [arg for key, value in options.items() for arg in (f"--{key.replace('_', '-')}", str(value))]
    shared = [arg for value in SHARED["set"] for arg in ("--set", value)]
    return [name, *map(str, checkpoints), *flags, *shared]
