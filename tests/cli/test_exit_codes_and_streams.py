"""Streams and exit codes (DESIGN §7), config discovery (§2) and checkpoint safety (§3).

Bad input of every kind exits 2 with exactly one line on stderr and no traceback. These run
the real ``python -m landscape_cli`` in subprocesses, so stdout and stderr are the process's
own; the processes are started together (each spends most of its ~2 s importing torch) and
the tests then check one result each.
"""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.adversarial import FAST, assert_one_error, write_config
from helpers.cheap_runs import cheap_args
from helpers.runners import Ran, invoke, run_process, start_process
from helpers.samples import DIGITS_FILE, MODELS, ROOT
from helpers.samples import MLP_CKPT as MLP

import landscape_cli
from landscape_cli.commands import COMMANDS


class _Pwn:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@dataclass
class Case:
    """One CLI run: its arguments, where it runs, and what its error line must contain."""

    args: list[str]
    needles: list[str] = field(default_factory=list)
    cwd: Path = ROOT
    output: Path | None = None


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """The files the cases need, in one folder that has no landscape.yaml above it."""
    d = tmp_path_factory.mktemp("cli_errors")
    sd = torch.load(MLP, map_location="cpu", weights_only=True)
    w = {"dir": d}
    w["base"] = write_config(d / "base.yaml")
    w["h16"] = write_config(d / "h16.yaml", hidden=16)
    w["nomodule"] = write_config(d / "nomodule.yaml", factory="nonexistent_pkg_xyz.models:make")
    w["noattr"] = write_config(d / "noattr.yaml", factory=f"{MODELS}:make_nothing")
    w["unknown_key"] = write_config(d / "unknown_key.yaml", extra_data="  batchsize: 64\n")
    np.savez(d / "empty.npz", x=np.zeros((0, 64), np.float32), y=np.zeros((0,), np.int64))
    w["empty"] = write_config(d / "empty.yaml", data=d / "empty.npz")
    w["bad_yaml"] = d / "bad.yaml"
    w["bad_yaml"].write_text(
        f"model:\n  factory: {MODELS}:make_mlp\ndata:\n  path: {DIGITS_FILE}\n  batch_size: 64\n"
        " max_samples: 10\n")  # line 6: indented one space, inside no mapping
    lone = d / "lone"
    lone.mkdir()
    w["lone_ckpt"] = lone / "ckpt.pt"
    torch.save(sd, w["lone_ckpt"])
    data = MLP.read_bytes()
    w["truncated"] = d / "truncated.pt"
    w["truncated"].write_bytes(data[: len(data) // 2])
    nan = {k: v.clone() for k, v in sd.items()}
    nan["2.weight"][3, 5] = float("nan")
    w["nan"] = d / "nan.pt"
    torch.save(nan, w["nan"])
    w["pwned"] = d / "pwned"
    w["evil_zip"] = d / "evil_zip.pt"
    torch.save({"state_dict": sd, "payload": _Pwn(w["pwned"])}, w["evil_zip"])
    w["evil_legacy"] = d / "evil_legacy.pt"
    torch.save({"state_dict": sd, "payload": _Pwn(w["pwned"])}, w["evil_legacy"],
               _use_new_zipfile_serialization=False)
    w["lightning"] = d / "lightning.ckpt"  # loads with a warning (criterion.weight is ignored)
    torch.save({"epoch": 1, "global_step": 2, "pytorch-lightning_version": "2.4.0",
                "state_dict": {**{f"model.{k}": v for k, v in sd.items()},
                               "criterion.weight": torch.ones(10)}}, w["lightning"])
    w["outputs"] = d / "outputs"
    w["outputs"].mkdir()
    return w


def _cases(w: dict[str, Path], mode: str) -> dict[str, Case]:
    """Every case; ``mode`` names the folder the ``-o`` outputs of this set of runs go to."""
    ck, base = str(MLP), ["-c", str(w["base"])]
    d = w["dir"]
    bad = {
        "missing_checkpoint": Case(["spectrum", str(d / "nope.pt"), *base],
                                   ["nope.pt", "not found"]),
        "truncated_checkpoint": Case(["spectrum", str(w["truncated"]), *base],
                                     ["truncated.pt", "truncated"]),
        "unsafe_zip": Case(["spectrum", str(w["evil_zip"]), *base],
                           ["evil_zip.pt", "posix.system", "--allow-global", "--trust-checkpoint"]),
        "unsafe_legacy": Case(["spectrum", str(w["evil_legacy"]), *base],
                              ["evil_legacy.pt", "posix.system", "--allow-global",
                               "--trust-checkpoint"]),
        "unsafe_not_allowed_enough": Case(  # allowing another global does not let this one in
            ["spectrum", str(w["evil_zip"]), *base, "--allow-global", "collections.OrderedDict"],
            ["posix.system", "--trust-checkpoint"]),
        "shape_mismatch": Case(["spectrum", ck, "-c", str(w["h16"])],
                               ["shape mismatch", "'0.weight'", "[32, 64]", "[16, 64]"]),
        "unknown_factory_module": Case(["spectrum", ck, "-c", str(w["nomodule"])],
                                       ["nomodule.yaml", "model.factory", "nonexistent_pkg_xyz"]),
        "missing_factory_attribute": Case(["spectrum", ck, "-c", str(w["noattr"])],
                                          ["noattr.yaml", "model.factory", "make_nothing"]),
        "bad_yaml": Case(["spectrum", ck, "-c", str(w["bad_yaml"])],
                         [str(w["bad_yaml"]), "invalid YAML", "line 6"]),
        "unknown_config_key": Case(["spectrum", ck, "-c", str(w["unknown_key"])],
                                   ["unknown_key.yaml", "data.batchsize", "unknown key"]),
        "config_not_found": Case(["spectrum", str(w["lone_ckpt"])],
                                 ["no config found", str(d / "lone"), str(d), "--config",
                                  "LANDSCAPE_CONFIG"], cwd=d),
        "explicit_config_missing": Case(["spectrum", ck, "-c", str(d / "absent.yaml")],
                                        ["absent.yaml", "not found"]),
        "empty_dataset": Case(["spectrum", ck, "-c", str(w["empty"])], ["empty.yaml", "empty"]),
        "max_samples_zero": Case(["spectrum", ck, *base, "--set", "data.max_samples=0"],
                                 ["data.max_samples", "greater than 0"]),
        "nan_loss": Case(["spectrum", str(w["nan"]), *base], ["not finite", "nan"]),
        "fail_if_syntax": Case(["spectrum", ck, *base, "--fail-if", "lambda_max>>3"],
                               ["--fail-if", "lambda_max>>3", "NAME OP NUMBER"]),
        "fail_if_unknown_name": Case(["spectrum", ck, *base, "--fail-if", "sharpness>3"],
                                     ["--fail-if", "sharpness", "lambda_max"]),
        "set_without_equals": Case(["spectrum", ck, *base, "--set", "data.batch_size"],
                                   ["--set", "data.batch_size", "KEY.PATH=VALUE"]),
        "tol_zero": Case(["spectrum", ck, *base, "--tol", "0"], ["--tol", "between 0 and 1"]),
    }
    for name, case in bad.items():  # every error run also asks for -o: nothing may be written
        # FAST goes first so that a case's own --set wins over it
        case.args[2:2] = FAST
        (w["outputs"] / mode / name).mkdir(parents=True, exist_ok=True)  # -o needs its folder
        case.args += ["-o", str(w["outputs"] / mode / name / "out.json")]
    (w["outputs"] / mode / "ok").mkdir(parents=True, exist_ok=True)
    good = {
        "gate_violated": Case(["spectrum", str(w["lightning"]), *base, *FAST, "--json",
                               "--fail-if", "lambda_max>0", "--fail-if", "loss<1e9"]),
        "gate_ok_to_file": Case(["spectrum", ck, *base, *FAST, "--fail-if", "lambda_max>1e9",
                                 "-o", str(w["outputs"] / mode / "ok" / "out.json")]),
        "debug_traceback": Case(["spectrum", str(d / "nope.pt"), *base, *FAST, "--debug"]),
        "module_help": Case(["--help"]),
    }
    return {**bad, **good}


BAD = ["missing_checkpoint", "truncated_checkpoint", "unsafe_zip", "unsafe_legacy",
       "unsafe_not_allowed_enough", "shape_mismatch", "unknown_factory_module",
       "missing_factory_attribute", "bad_yaml", "unknown_config_key", "config_not_found",
       "explicit_config_missing", "empty_dataset", "max_samples_zero", "nan_loss",
       "fail_if_syntax", "fail_if_unknown_name", "set_without_equals", "tol_zero"]


#: Bad input that also runs in a real process (the rest run in-process: each process spends
#: seconds importing torch). The unsafe pickles are among them: their code must not run.
REAL_PROCESS = ["truncated_checkpoint", "unsafe_zip", "unsafe_legacy", "bad_yaml", "nan_loss"]
GOOD = ["gate_violated", "gate_ok_to_file", "debug_traceback", "module_help"]


@pytest.fixture(scope="module")
def runs(world) -> dict[str, Ran]:
    """Run the real-process cases as ``python -m landscape_cli ...``, two at a time."""
    cases = _cases(world, "process")
    assert sorted(BAD) == sorted(n for n in cases if n not in GOOD)

    def one(case: Case) -> Ran:
        return run_process(case.args, cwd=case.cwd)

    names = [*REAL_PROCESS, *GOOD]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(names, pool.map(one, [cases[n] for n in names])))




@pytest.mark.parametrize("name", BAD)
def test_bad_input_exits_2_with_one_line(world, monkeypatch, name):
    """In-process (Typer's CliRunner keeps stdout and stderr apart)."""
    case = _cases(world, "inprocess")[name]
    monkeypatch.chdir(case.cwd)
    # -o was given: no file, not even a temporary one, is left behind.
    assert_one_error(invoke(case.args), case.needles, folder=world["outputs"] / "inprocess" / name)


@pytest.mark.parametrize("name", REAL_PROCESS)
def test_bad_input_in_a_real_process(runs, world, name):
    assert_one_error(runs[name], _cases(world, "process")[name].needles,
                     folder=world["outputs"] / "process" / name)


def test_unsafe_pickle_code_never_ran(runs, world):
    """After the refusals above (in a real process, and in-process with --allow-global of an
    unrelated name), the pickled ``os.system("touch ...")`` has not run."""
    assert runs["unsafe_zip"].returncode == runs["unsafe_legacy"].returncode == 2
    result = invoke(["spectrum", world["evil_legacy"], "-c", world["base"], *FAST,
                      "--allow-global", "builtins.print"])
    assert result.returncode == 2 and "posix.system" in result.stderr
    result = invoke(["inspect", world["evil_zip"], "--json"])
    assert result.returncode == 0
    assert json.loads(result.stdout)["results"]["unsafe_globals"] == ["posix.system"]
    assert not world["pwned"].exists(), "a checkpoint's pickled code was executed"


def test_trust_checkpoint_is_the_way_out(world, tmp_path):
    """The refusal's second way out does load the file (and so runs its code): proof that the
    marker test above can fail."""
    marker = tmp_path / "trusted"
    sd = torch.load(MLP, map_location="cpu", weights_only=True)
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": sd, "payload": _Pwn(marker)}, path)
    result = invoke(["spectrum", path, "-c", world["base"], *FAST, "--json", "--trust-checkpoint"])
    assert result.returncode == 0, result.output
    assert marker.exists()
    assert json.loads(result.stdout)["checkpoint"]["key"] == "state_dict"


def test_debug_shows_a_traceback(runs):
    ran = runs["debug_traceback"]
    assert ran.returncode == 2
    assert "Traceback (most recent call last)" in ran.stderr
    assert "CheckpointError" in ran.stderr
    assert ran.stderr.strip().splitlines()[-1].startswith("error: ")
    assert ran.stdout == ""


def test_violated_gate_exits_1_and_still_reports(runs):
    ran = runs["gate_violated"]
    assert ran.returncode == 1, ran.stderr
    doc = json.loads(ran.stdout)  # stdout is exactly one JSON document, nothing else
    assert doc["status"] == "ok"
    gates = doc["gates"]
    assert [g["expr"] for g in gates] == ["lambda_max>0", "loss<1e9"]
    assert gates[0]["violated"] is True
    assert gates[0]["value"] == doc["results"]["top_eigenvalues"][0] > 0
    assert gates[1]["violated"] is True and gates[1]["value"] == doc["results"]["loss"]
    # Warnings go to stderr (and into the document), never to stdout.
    assert any("criterion.weight" in w for w in doc["warnings"])
    assert "warning:" in ran.stderr and "criterion.weight" in ran.stderr
    assert "warning" not in ran.stdout.replace('"warnings"', "")
    assert "Traceback" not in ran.stderr


def test_gate_not_violated_exits_0_and_output_file(runs, world):
    ran = runs["gate_ok_to_file"]
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == ""  # -o: the result goes to the file only
    out = world["outputs"] / "process" / "ok" / "out.json"
    doc = json.loads(out.read_text())
    assert doc["gates"] == [{"expr": "lambda_max>1e9", "value": doc["results"]["top_eigenvalues"][0],
                             "violated": False}]
    assert doc["settings"]["n_samples"] == 200
    assert [p.name for p in out.parent.iterdir()] == ["out.json"]  # no temporary left


def test_python_m_help(runs):
    ran = runs["module_help"]
    assert ran.returncode == 0, ran.stderr
    assert "spectrum" in ran.stdout and "inspect" in ran.stdout
    assert "Usage" in ran.stdout
    assert ran.stderr == ""


# ----------------------------------------------------------------------------- stdout fails


def _writers() -> dict[str, list[str]]:
    """Every way of writing to stdout, from the registry: each analysis command (cheaply, ``-q``
    so that its warnings stay off stderr), inspect, schema, a batch, the help and the version."""
    runs = {name: [*cheap_args(name), "-q"] for name in COMMANDS}
    return {**runs, "inspect": ["inspect", str(MLP)], "schema": ["schema"],
            "batch": ["batch", "-q", str(MLP), "--command", *cheap_args("spectrum")[:1],
                      *cheap_args("spectrum")[2:]],
            "help": ["--help"], "command help": ["spectrum", "--help"], "version": ["--version"]}


WRITERS = _writers()


@pytest.fixture(scope="module")
def full_stdout() -> dict[str, Ran]:
    """Each writer run as ``python -m landscape_cli ... > /dev/full``, two at a time."""

    def one(args: list[str]) -> Ran:
        with open("/dev/full", "w") as full:
            return run_process(args, stdout=full)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(WRITERS, pool.map(one, WRITERS.values())))


@pytest.mark.slow
@pytest.mark.parametrize("name", WRITERS)
def test_a_full_stdout_ends_every_command_with_one_line_and_exit_2(full_stdout, name):
    ran = full_stdout[name]
    assert (ran.returncode, ran.stderr) == (
        2, "error: cannot write to stdout: No space left on device\n"), (WRITERS[name], ran.stderr)


@pytest.mark.parametrize("name", ["help", "version", "schema"])
def test_a_closed_pipe_is_the_quiet_141_for_what_click_prints_too(name):
    """Click's own handler would end a closed pipe with 1, a violated gate's code."""
    proc = start_process(WRITERS[name], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (141, b"")


# ----------------------------------------------------------------------------- in-process


def test_version():
    result = invoke(["--version"])
    assert result.returncode == 0
    assert result.stdout.strip() == f"landscape {landscape_cli.__version__} (torch {torch.__version__})"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{landscape_cli.__version__}"' in pyproject


def test_json_flag_output_parses_and_warnings_on_stderr(world):
    result = invoke(["spectrum", world["lightning"], "-c", world["base"], *FAST, "--json"])
    assert result.returncode == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema_version"] == "1" and doc["command"] == "spectrum"
    assert result.stderr.count("warning:") == len(doc["warnings"]) == 1


@pytest.fixture
def discovery(tmp_path, monkeypatch):
    """Four configs that differ only in max_samples, so the report shows which one was used."""
    def write(path: Path, n: int) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_config(path, max_samples=n)

    project = tmp_path / "project"
    ckpt = project / "runs" / "a" / "ckpt.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(MLP.read_bytes())
    elsewhere = tmp_path / "elsewhere" / "ckpt.pt"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(MLP.read_bytes())
    paths = {
        "explicit": write(tmp_path / "explicit.yaml", 101),
        "env": write(tmp_path / "env.yaml", 102),
        "parent": write(project / "landscape.yaml", 103),
        "cwd": write(tmp_path / "work" / "landscape.yaml", 104),
    }
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.delenv("LANDSCAPE_CONFIG", raising=False)

    def used(checkpoint: Path, *args, env_config: Path | None = None) -> tuple[int, str]:
        env = {"LANDSCAPE_CONFIG": str(env_config) if env_config else None}
        result = invoke(["spectrum", checkpoint, "--top", "1", "--json", *args], env=env)
        assert result.returncode == 0, result.output
        doc = json.loads(result.stdout)
        return doc["settings"]["n_samples"], doc["settings"]["config"]

    return paths, ckpt, elsewhere, used


def test_config_discovery_order(discovery):
    paths, ckpt, elsewhere, used = discovery
    # -c beats $LANDSCAPE_CONFIG, which beats a parent folder's file, which beats the cwd's.
    assert used(ckpt, "-c", paths["explicit"], env_config=paths["env"]) == (101, str(paths["explicit"]))
    assert used(ckpt, env_config=paths["env"]) == (102, str(paths["env"]))
    n, where = used(ckpt)
    assert (n, Path(where)) == (103, paths["parent"].resolve())
    n, where = used(elsewhere)  # no landscape.yaml above it: the working directory's
    assert (n, Path(where)) == (104, paths["cwd"].resolve())


def test_config_beside_checkpoint_beats_parent(discovery, tmp_path):
    paths, ckpt, _, used = discovery
    write_config(ckpt.parent / "landscape.yaml", max_samples=105)
    assert used(ckpt)[0] == 105
    assert used(ckpt, "-c", paths["explicit"])[0] == 101


def test_env_config_missing_is_an_error(tmp_path):
    result = invoke(["spectrum", MLP, "--top", "1", "--json"],
                     env={"LANDSCAPE_CONFIG": str(tmp_path / "gone.yaml")})
    assert result.returncode == 2
    assert "gone.yaml" in result.stderr and "LANDSCAPE_CONFIG" in result.stderr
    assert result.stdout == ""


# ----------------------------------------------------------------------------- out of memory

#: what torch's CPU allocator raised on GPT-2-small (benchmarks/README.md, issue 27.4)
CPU_ALLOCATOR = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                 "allocate memory: you tried to allocate 3960053760 bytes. Error code 12 "
                 "(Cannot allocate memory)")


@pytest.mark.parametrize("error", [RuntimeError(CPU_ALLOCATOR), torch.OutOfMemoryError(
    "CUDA out of memory. Tried to allocate 2.00 GiB"), MemoryError()],
                         ids=["cpu-allocator", "cuda", "python"])
def test_an_allocation_failure_is_one_line_naming_what_to_lower(monkeypatch, tmp_path, error):
    from landscape_cli.engine.hvp import HVPEngine

    def exhausted(self, vectors):
        raise error

    monkeypatch.setattr(HVPEngine, "hvp", exhausted)
    ran = invoke(["spectrum", MLP, *FAST, "--top", "1", "-o", tmp_path / "out.json"])
    line = assert_one_error(ran, ["out of memory", "--memory-budget", "--hvp-strategy stream"],
                            folder=tmp_path, before=[])
    assert "internal error" not in line


def test_any_other_runtime_error_stays_an_internal_error(monkeypatch):
    from landscape_cli.engine.hvp import HVPEngine

    def broken(self, vectors):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(HVPEngine, "hvp", broken)
    ran = invoke(["spectrum", MLP, *FAST, "--top", "1"])
    assert ran.returncode == 3, ran.detail()
    assert ran.stderr.startswith("internal error: RuntimeError: mat1 and mat2"), ran.detail()
