"""Hostile and careless use of the command line (issue 16): ``-o`` never destroys an input or a
device, usage errors and non-finite numbers are one line, signals and closed or full streams
end the process cleanly. Each test asserts the exit code, the one stderr line, no traceback,
no file left behind and, for ``-o``, the input's bytes unchanged."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import threading
import time
import typing
from pathlib import Path

import pytest
from helpers.adversarial import FAST, assert_one_error, listing, snapshot, write_config
from helpers.runners import invoke, run_process, start_process
from helpers.samples import MLP_CKPT as MLP


@pytest.fixture
def world(tmp_path) -> dict[str, Path]:
    """A copy of the sample MLP, its config, and an empty folder for outputs."""
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(MLP.read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    return {"dir": tmp_path, "ckpt": ckpt, "config": write_config(tmp_path / "landscape.yaml"),
            "out": out}


def _spectrum(world, *args) -> list:
    return ["spectrum", world["ckpt"], "-c", world["config"], *FAST, "--json", *args]


# ----------------------------------------------------------------------------- -o and inputs


@pytest.mark.parametrize("how", ["same_path", "relative_path", "symlink", "hard_link", "config",
                                 "data", "inspect"])
def test_output_never_names_an_input(world, how, monkeypatch):
    data = world["dir"] / "digits.npz"
    data.write_bytes((MLP.parent.parent / "data" / "digits.npz").read_bytes())
    write_config(world["config"], data=data)
    before = snapshot(world["ckpt"], world["config"], data)
    target = {"same_path": world["ckpt"], "relative_path": Path("ckpt.pt"),
              "symlink": world["dir"] / "link.pt", "hard_link": world["dir"] / "hard.pt",
              "config": world["config"], "data": data, "inspect": world["ckpt"]}[how]
    if how == "symlink":
        target.symlink_to(world["ckpt"])
    if how == "hard_link":
        os.link(world["ckpt"], target)
    names = listing(world["dir"])
    args = (["inspect", world["ckpt"], "--json", "-o", target] if how == "inspect"
            else _spectrum(world, "-o", target))
    ran = invoke(args, cwd=world["dir"])
    assert_one_error(ran, ["-o", str(target), "is an input of this run"], folder=world["dir"],
                     before=names, unchanged=before)
    if how == "symlink":
        assert target.is_symlink()


def test_plot_never_names_an_input(world):
    pytest.importorskip("matplotlib")
    link = world["dir"] / "ckpt.png"
    link.symlink_to(world["ckpt"])
    before, names = snapshot(world["ckpt"]), listing(world["dir"])
    ran = invoke(_spectrum(world, "--plot", link), cwd=world["dir"])
    assert_one_error(ran, ["--plot", "is an input of this run"], folder=world["dir"],
                     before=names, unchanged=before)


@pytest.mark.parametrize("how", ["folder", "missing_parent", "parent_is_a_file"])
def test_output_destination_refused_before_the_run(world, how):
    target = {"folder": world["out"], "missing_parent": world["dir"] / "no" / "such" / "r.json",
              "parent_is_a_file": world["ckpt"] / "r.json"}[how]
    needle = {"folder": "is a folder", "missing_parent": "does not exist",
              "parent_is_a_file": "is not a folder"}[how]
    names = listing(world["dir"])
    ran = invoke(_spectrum(world, "-o", target))
    assert_one_error(ran, ["-o", str(target), needle], folder=world["dir"], before=names,
                     unchanged=snapshot(world["ckpt"]))


def test_output_through_a_symlink_replaces_the_target_and_keeps_the_link(world):
    real = world["out"] / "real.json"
    real.write_text("old")
    link = world["out"] / "link.json"
    link.symlink_to(real)
    ran = invoke(_spectrum(world, "-o", link))
    assert ran.returncode == 0, ran.detail()
    assert link.is_symlink() and json.loads(real.read_text())["command"] == "spectrum"
    assert listing(world["out"]) == ["link.json", "real.json"]  # no temporary left


def test_output_to_a_device_symlink_is_written_in_place(world):
    """A symlink to /dev/null stays a symlink, and /dev/null stays a device (an atomic rename
    would have replaced the link, and through /dev/stdout, as root, the device node)."""
    link = world["out"] / "null"
    link.symlink_to(os.devnull)
    ran = invoke(_spectrum(world, "-o", link))
    assert ran.returncode == 0, ran.detail()
    assert link.is_symlink() and stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert listing(world["out"]) == ["null"]


def test_output_dev_stdout_writes_to_the_pipe(world):
    """``-o /dev/stdout`` with stdout a pipe: the report arrives on the pipe, and /dev/stdout
    is still the kernel's link."""
    ran = run_process(_spectrum(world, "-o", "/dev/stdout"))
    assert ran.returncode == 0, ran.detail()
    assert json.loads(ran.stdout)["command"] == "spectrum"
    assert os.path.islink("/dev/stdout")


def test_output_to_a_fifo(world):
    fifo = world["out"] / "fifo"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    ran = invoke(_spectrum(world, "-o", fifo))
    reader.join(timeout=60)
    assert ran.returncode == 0, ran.detail()
    assert json.loads(received[0])["command"] == "spectrum"
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_output_dash_is_stdout(world):
    ran = invoke(_spectrum(world, "-o", "-"), cwd=world["out"])
    assert ran.returncode == 0, ran.detail()
    assert json.loads(ran.stdout)["command"] == "spectrum"
    assert listing(world["out"]) == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_a_full_disk_is_exit_2(world):
    ran = invoke(_spectrum(world, "-o", "/dev/full"))
    assert_one_error(ran, ["/dev/full", "No space left"])
    with open("/dev/full", "w") as full:
        proc = run_process(_spectrum(world), stdout=full)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "stdout" in lines[0] and "No space left" in lines[0]


def test_a_closed_stdout_pipe_is_the_quiet_141(world):
    """The reader went away (``| head`` done): exit 141 as a Unix filter killed by SIGPIPE, and
    nothing on stderr; not 1, which means a violated gate."""
    proc = start_process(_spectrum(world), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 141, err
    assert err == b""


# ----------------------------------------------------------------------------- signals


def _wait_for_cpu(pid: int, seconds: float) -> None:
    """Until the process has used ``seconds`` of CPU time (Linux /proc), or 120 s passed."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        if (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") >= seconds:
            return
        time.sleep(0.1)


def _interrupt(world, signum: int, when: str) -> None:
    """Send ``signum`` at startup (importing torch) or during a long trace; with ``-o``."""
    out = world["out"] / "r.json"
    args = ["trace", world["ckpt"], "-c", world["config"],
            "--set", "data.max_samples=1500", "--rtol", "1e-9", "--max-hvps", "1000000", "-o", out]
    proc = start_process(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if when == "startup":
            time.sleep(0.8)  # importing torch
        else:
            _wait_for_cpu(proc.pid, 8.0)  # well past loading, whatever the machine's load
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()  # a run the signal failed to stop must not outlive the test
    lines = stderr.strip().splitlines()
    assert proc.returncode == 128 + signum, stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: interrupted by {signum.name}"), stderr
    assert "Traceback" not in stderr and stdout == ""
    if when == "startup":
        assert listing(world["out"]) == []
    else:  # never half a file: none, or the whole report of the estimate so far (issue 17)
        assert listing(world["out"]) == ["r.json"], listing(world["out"])
        doc = json.loads(out.read_text())
        assert doc["status"] == "interrupted" and doc["results"]["converged"] is False
        assert doc["results"]["probes"] > 0 and doc["results"]["trace"] > 0  # the estimate so far
        assert any(w.startswith("interrupted: the estimate after") for w in doc["warnings"])


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("when", ["startup", "running"])
def test_a_signal_ends_the_run_with_one_line(world, signum, when):
    _interrupt(world, signum, when)


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("args, needles", [
    (["spectrum", "x.pt", "--topp", "3"], ["No such option: --topp", "--top", "--help"]),
    (["spectrum"], ["Missing argument", "checkpoint", "landscape spectrum --help"]),
    (["spectrum", "x.pt", "--top", "many"], ["--top", "integer"]),
    (["spectrum", "x.pt", "--top", "0"], ["--top", "greater than or equal to 1"]),
    (["trace", "x.pt", "--method", "exact"], ["--method", "exact"]),
    (["nosuchcommand"], ["nosuchcommand", "landscape --help"]),
])
def test_usage_errors_are_one_line(args, needles):
    assert_one_error(invoke(args), needles)


def _float_options() -> list[tuple[str, str]]:
    """Every float option of every analysis command, read from the app's signatures, so that
    a new option is covered without a line here."""
    from landscape_cli.cli.app import app

    found = []
    for command in app.registered_commands:
        signature = getattr(command.callback, "__signature__", None)
        for param in signature.parameters.values() if signature else ():
            annotated = typing.get_args(param.annotation)
            kind = annotated[0] if annotated else param.annotation
            if float in (typing.get_args(kind) or (kind,)):
                found.append((command.name, "--" + param.name.replace("_", "-")))
    return found


@pytest.mark.parametrize("command, option", _float_options())
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_non_finite_options_are_refused(command, option, value, tmp_path):
    ran = invoke([command, MLP, option, value, "-o", tmp_path / "r.json"])
    assert_one_error(ran, [option, value, "finite"], folder=tmp_path, before=[])


def test_float_options_exist():
    """The table above is not empty (the introspection found the options)."""
    assert {"--tol", "--rtol", "--grad-rtol", "--sigma"} <= {opt for _, opt in _float_options()}


def test_top_beyond_the_parameter_count_is_clamped_with_a_warning(world):
    ran = invoke(_spectrum(world, "--params", "2.bias", "--top", "12", "--bottom", "11"))
    assert ran.returncode == 0, ran.detail()
    doc = json.loads(ran.stdout)
    assert len(doc["results"]["top_eigenvalues"]) == 10 == doc["settings"]["n_analysed"]
    assert len(doc["results"]["bottom_eigenvalues"]) == 10
    assert any("--top 12" in w and "10" in w for w in doc["warnings"])
    assert any("--bottom 11" in w for w in doc["warnings"])


@pytest.mark.slow
def test_an_interrupted_density_reports_the_steps_taken(world):
    """Ctrl-C during ``spectrum --density`` writes the density of the SLQ steps taken."""
    out = world["out"] / "d.json"
    args = ["spectrum", world["ckpt"], "-c", world["config"],
            "--set", "data.max_samples=1500", "--density", "--steps", "2400", "-o", out]
    proc = start_process(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_cpu(proc.pid, 12.0)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["error: interrupted by SIGINT; the report holds the "
                                           "result so far (status: interrupted)"]
    doc = json.loads(out.read_text())
    density = doc["results"]["density"]
    assert doc["status"] == "interrupted" and 2 <= density["steps"] < 2400
    assert len(density["grid"]) == len(density["values"]) and density["negative_mass"] is not None
    assert any(w.startswith("interrupted: the density after") for w in doc["warnings"])
