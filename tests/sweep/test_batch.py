"""``landscape batch`` (issue 21, DESIGN §8): one JSON line per checkpoint, a broken checkpoint
is its own error line, a run killed with SIGKILL resumes without recomputing a written line,
shards cover the set once and merge back in order, the key invalidates exactly what changed,
natural order, stdin, and the trend summary with gates."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers.adversarial import assert_one_error, listing
from helpers.runners import Ran, invoke, run_process, start_process
from helpers.samples import ROOT

import landscape_cli.sweep.workers as batch_module

MLP_DIR = ROOT / "sample_checkpoints" / "mlp"
#: the six sample MLP checkpoints (distinct bytes), in natural order
MLP = sorted(MLP_DIR.glob("seed*_epoch*.pt"))
CNN = ROOT / "sample_checkpoints" / "cnn_bn" / "final.pt"
CONFIG = ROOT / "configs" / "mlp.yaml"
FAST = ("--top", "1", "--set", "data.max_samples=200")
SPECTRUM = ("--command", "spectrum", *FAST)


def run(*args, input: str | None = None, cwd: Path | None = None) -> Ran:
    """The real CLI in-process (``helpers.runners.invoke``)."""
    return invoke(args, input=input, cwd=cwd)


def read(path: Path) -> list[dict]:
    text = path.read_text()
    assert text == "" or text.endswith("\n"), repr(text[-200:])
    return [json.loads(line) for line in text.splitlines()]


def parse(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def names(lines: list[dict]) -> list[str]:
    return [Path(line["checkpoint"]["path"]).name for line in lines]


def stable(line: dict) -> dict:
    """A line without its timings and work counters (the first checkpoint of a worker also
    builds the model and data, so its counters differ from a later one's)."""
    return {k: v for k, v in line.items() if k != "cost"}


def by_name(lines: list[dict]) -> dict[str, dict]:
    return {Path(line["checkpoint"]["path"]).name: line for line in lines}


def copy(sources, folder: Path, targets) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for source, target in zip(sources, targets):
        shutil.copyfile(source, folder / target)
        out.append(folder / target)
    return out


def local_config(folder: Path, extra: str = "") -> Path:
    """A ``landscape.yaml`` in ``folder`` extending the MLP config (found by discovery)."""
    path = folder / "landscape.yaml"
    path.write_text(f"extends: {CONFIG}\n{extra}")
    return path


@pytest.fixture
def analysed(monkeypatch):
    """The names of the checkpoints ``landscape_cli.sweep.workers.analyse`` is called on (in-process
    runs with one worker)."""
    calls: list[str] = []
    real = batch_module.analyse

    def counting(job):
        calls.append(Path(job.checkpoint).name)
        return real(job)

    monkeypatch.setattr(batch_module, "analyse", counting)
    return calls


# ----------------------------------------------------------------------------- broken files


def test_a_truncated_checkpoint_is_its_own_error_line_and_the_others_match_single_runs(tmp_path):
    good_1, good_3 = copy([MLP[0], MLP[2]], tmp_path, ["ck1_good.pt", "ck10_good.pt"])
    broken = tmp_path / "ck2_broken.pt"  # natural order puts it second
    broken.write_bytes(MLP[1].read_bytes()[:1000])
    out = tmp_path / "out.jsonl"
    ran = run("batch", str(tmp_path / "*.pt"), *SPECTRUM, "-c", CONFIG, "-o", out)
    assert ran.returncode == 2, ran.detail()
    assert "Traceback" not in ran.stderr, ran.detail()
    lines = read(out)
    assert names(lines) == ["ck1_good.pt", "ck2_broken.pt", "ck10_good.pt"]
    assert [line["status"] for line in lines] == ["ok", "error", "ok"]
    error = lines[1]["error"]
    assert str(broken) in error and "\n" not in error, error
    assert "results" not in lines[1] or not lines[1]["results"]
    for line, path in ((lines[0], good_1), (lines[2], good_3)):
        single = run("spectrum", path, *FAST, "-c", CONFIG, "--json")
        assert single.returncode == 0, single.detail()
        report = json.loads(single.stdout)
        assert line["results"] == report["results"], path
        assert line["settings"]["options"] == report["settings"]["options"]
        assert line["checkpoint"]["sha256"] == report["checkpoint"]["sha256"]

    fast = tmp_path / "fail_fast.jsonl"
    ran = run("batch", str(tmp_path / "*.pt"), *SPECTRUM, "-c", CONFIG, "-o", fast, "--fail-fast")
    assert ran.returncode == 2, ran.detail()
    assert [(n, line["status"]) for n, line in zip(names(read(fast)), read(fast))] == \
        [("ck1_good.pt", "ok"), ("ck2_broken.pt", "error")]


# ----------------------------------------------------------------------------- SIGKILL, resume

SLOW_LOSS = """import time

import torch


class SlowLoss(torch.nn.CrossEntropyLoss):
    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.delay = delay

    def forward(self, output, target):
        time.sleep(self.delay)
        return super().forward(output, target)
"""


def test_a_batch_killed_with_sigkill_resumes_without_recomputing_a_written_line(tmp_path, analysed):
    folder = tmp_path / "ckpts"
    copy(MLP, folder, [f"ck{i}.pt" for i in range(1, 7)])
    (tmp_path / "slow.py").write_text(SLOW_LOSS)  # every analysis takes a measurable time
    local_config(folder, f"loss:\n  factory: {tmp_path / 'slow.py'}:SlowLoss\n"
                 "  kwargs: {delay: 0.3}\n")
    args = ["batch", str(folder / "*.pt"), *SPECTRUM, "-q"]

    reference = tmp_path / "uninterrupted.jsonl"
    assert run(*args, "-o", reference).returncode == 0
    expected = reference.read_text().splitlines(keepends=True)
    assert [Path(json.loads(t)["checkpoint"]["path"]).name for t in expected] == \
        [f"ck{i}.pt" for i in range(1, 7)]

    out = tmp_path / "out.jsonl"
    with open(tmp_path / "stdout", "wb") as so, open(tmp_path / "stderr", "wb") as se:
        proc = start_process([*args, "-o", str(out)], cwd=tmp_path, stdout=so, stderr=se,
                             start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while not (out.exists() and out.read_bytes().count(b"\n") >= 2):
                assert proc.poll() is None, (tmp_path / "stderr").read_text()
                assert time.monotonic() < deadline, "no two lines within 120 s"
                time.sleep(0.02)
            os.killpg(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    written = out.read_text().splitlines(keepends=True)
    kept = len(written)
    assert 2 <= kept < 6, kept  # killed part-way
    for text in written:
        assert text.endswith("\n")
        json.loads(text)
    # a run killed mid-write leaves a torn last line: half of the next checkpoint's line
    with open(out, "a") as handle:
        handle.write(expected[kept][: len(expected[kept]) // 2])

    analysed.clear()
    ran = run(*args, "-o", out)  # resume is the default when -o exists
    assert ran.returncode == 0, ran.detail()
    # no finished checkpoint recomputed, the torn one and the rest computed once each
    assert analysed == [f"ck{i}.pt" for i in range(kept + 1, 7)], (kept, analysed)
    final = out.read_text().splitlines(keepends=True)
    assert final[:kept] == written  # the written lines kept byte for byte (timings included)
    assert [stable(json.loads(t)) for t in final] == [stable(json.loads(t)) for t in expected]


# ----------------------------------------------------------------------------- shards, merge


def test_shards_cover_the_set_exactly_once_and_merge_restores_the_order(tmp_path):
    import torch

    folder = tmp_path / "ckpts"
    # seven files: shards of 3, 2 and 2; natural order differs from the plain string order
    copy(MLP, folder, ["e1.pt", "e2.pt", "e3.pt", "e10.pt", "e11.pt", "e20.pt"])
    torch.save({"state_dict": torch.load(MLP[0])}, folder / "e100.pt")
    order = ["e1.pt", "e2.pt", "e3.pt", "e10.pt", "e11.pt", "e20.pt", "e100.pt"]
    parts = []
    for i in (1, 2, 3):
        part = tmp_path / f"part{i}.jsonl"
        ran = run("batch", str(folder / "*.pt"), *SPECTRUM, "-c", CONFIG, "--shard", f"{i}/3",
                  "-o", part)
        assert ran.returncode == 0, ran.detail()
        parts.append(read(part))
    assert [names(p) for p in parts] == [order[0::3], order[1::3], order[2::3]]
    seen = [n for p in parts for n in names(p)]
    assert sorted(seen) == sorted(order) and len(seen) == len(set(seen)) == 7

    merged = tmp_path / "all.jsonl"
    ran = run("batch", "--merge", *(tmp_path / f"part{i}.jsonl" for i in (3, 1, 2)), "-o", merged)
    assert ran.returncode == 0, ran.detail()
    lines = read(merged)
    assert names(lines) == order
    shard_lines = by_name([line for p in parts for line in p])
    assert all(line == shard_lines[n] for n, line in zip(names(lines), lines))
    whole = run("batch", str(folder / "*.pt"), *SPECTRUM, "-c", CONFIG)
    assert whole.returncode == 0, whole.detail()
    assert [stable(line) for line in lines] == [stable(line) for line in parse(whole.stdout)]


# ----------------------------------------------------------------------------- invalidation


def test_a_changed_option_seed_or_checkpoint_invalidates_exactly_its_lines(tmp_path, analysed):
    a, b = tmp_path / "a", tmp_path / "b"
    copy(MLP[:2], a, ["x1.pt", "x2.pt"])
    copy(MLP[3:5], b, ["y1.pt", "y2.pt"])
    local_config(a, "seed: 0\n")
    b_config = local_config(b, "seed: 0\n")
    out = tmp_path / "out.jsonl"
    args = ["batch", str(tmp_path / "**" / "*.pt"), *SPECTRUM, "-o", out, "-q"]
    everything = ["x1.pt", "x2.pt", "y1.pt", "y2.pt"]

    def again(*more: str) -> list[str]:
        analysed.clear()
        ran = run(*args, *more)
        assert ran.returncode == 0, ran.detail()
        return list(analysed)

    assert again() == everything
    before = out.read_bytes()
    first = by_name(read(out))
    # nothing changed, or only how the sweep is shown: nothing computed, the file as it was
    assert again() == []
    assert again("--summary", tmp_path / "s.md") == []
    assert out.read_bytes() == before

    # a seed changed for the checkpoints of one folder (its landscape.yaml): those two only
    b_config.write_text(f"extends: {CONFIG}\nseed: 1\n")
    assert again() == ["y1.pt", "y2.pt"]
    lines = by_name(read(out))
    assert sorted(lines) == everything
    assert lines["x1.pt"] == first["x1.pt"] and lines["x2.pt"] == first["x2.pt"]
    assert lines["y1.pt"]["settings"]["seed"] == 1 and first["y1.pt"]["settings"]["seed"] == 0

    # one checkpoint's bytes changed: that line only
    shutil.copyfile(MLP[5], a / "x2.pt")
    assert again() == ["x2.pt"]
    lines = by_name(read(out))
    assert sorted(lines) == everything
    assert lines["x2.pt"]["checkpoint"]["sha256"] != first["x2.pt"]["checkpoint"]["sha256"]
    assert lines["x1.pt"] == first["x1.pt"]

    # the seed given on the command line: every line (all four read it)
    assert again("--seed", "3") == everything
    assert again("--seed", "3") == []

    # a command option changed (--top 1 → --top 2, the later one wins): every line, once
    assert sorted(again("--top", "2", "--seed", "3")) == everything
    assert again("--top", "2", "--seed", "3") == []
    lines = read(out)
    assert len(lines) == 4
    assert all(len(line["results"]["top_eigenvalues"]) == 2 for line in lines)


@pytest.mark.parametrize("more, changed", [
    (("--params", "0.*"), lambda line: line["settings"]["n_analysed"] == 2080),
    (("--batches", "1"), lambda line: line["settings"]["n_batches"] == 1),
], ids=["params", "batches"])
def test_shared_options_that_change_the_results_invalidate_the_lines(tmp_path, analysed, more,
                                                                      changed):
    """--params and --batches change what is analysed, so a line computed without them is not
    the answer with them."""
    copy(MLP[:2], tmp_path, ["x1.pt", "x2.pt"])
    out = tmp_path / "out.jsonl"
    args = ["batch", str(tmp_path / "*.pt"), *SPECTRUM, "-c", CONFIG,
            "--set", "data.batch_size=100", "-o", out, "-q"]
    assert run(*args).returncode == 0
    assert not any(changed(line) for line in read(out))  # 2,410 parameters, 2 batches
    analysed.clear()
    assert run(*args, *more).returncode == 0
    assert analysed == ["x1.pt", "x2.pt"], analysed
    assert all(changed(line) for line in read(out))


def test_checkpoints_with_the_same_bytes_keep_one_line_each_on_resume(tmp_path, analysed):
    """``last.pt`` beside the ``epoch…pt`` it copies (a common layout): the key does not hold
    the path, so a resumed sweep must still give one line per checkpoint, its own path."""
    copy([MLP[0], MLP[2], MLP[2]], tmp_path, ["epoch1.pt", "epoch2.pt", "last.pt"])
    out = tmp_path / "out.jsonl"
    args = ["batch", str(tmp_path / "*.pt"), *SPECTRUM, "-c", CONFIG, "-o", out, "-q"]
    assert run(*args).returncode == 0
    first = read(out)
    assert names(first) == ["epoch1.pt", "epoch2.pt", "last.pt"]
    analysed.clear()
    assert run(*args).returncode == 0
    assert names(read(out)) == ["epoch1.pt", "epoch2.pt", "last.pt"], names(read(out))
    assert analysed == []


# ----------------------------------------------------------------------------- discovery


def test_natural_order_and_a_checkpoint_of_another_architecture(tmp_path):
    copy([MLP[0], CNN, MLP[2], MLP[4]], tmp_path, ["epoch10.pt", "epoch2.pt", "epoch1.pt", "epoch100.pt"])
    ran = run("batch", str(tmp_path / "epoch*.pt"), *SPECTRUM, "-c", CONFIG)
    assert ran.returncode == 2, ran.detail()
    lines = parse(ran.stdout)
    assert names(lines) == ["epoch1.pt", "epoch2.pt", "epoch10.pt", "epoch100.pt"]
    assert [line["status"] for line in lines] == ["ok", "error", "ok", "ok"]
    assert str(tmp_path / "epoch2.pt") in lines[1]["error"] and "\n" not in lines[1]["error"]
    assert all(line["results"]["top_eigenvalues"][0] > 0 for line in lines if line["status"] == "ok")


def test_paths_on_stdin(tmp_path):
    paths = copy(MLP[:3], tmp_path, ["s1.pt", "s2.pt", "s3.pt"])
    stdin = "\n".join(map(str, paths)) + "\n\n"
    ran = run("batch", "-", *SPECTRUM, "-c", CONFIG, input=stdin)
    assert ran.returncode == 0, ran.detail()
    lines = parse(ran.stdout)
    assert [line["checkpoint"]["path"] for line in lines] == [str(p) for p in paths]
    assert all(line["status"] == "ok" for line in lines)
    # in a real process, with a pipe
    proc = run_process(["batch", "-", *SPECTRUM, "-c", str(CONFIG), "-q"], input=stdin,
                       cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [stable(line) for line in parse(proc.stdout)] == [stable(line) for line in lines]


def test_an_empty_glob_is_one_clear_error(tmp_path):
    (tmp_path / "runs").mkdir()
    pattern = str(tmp_path / "runs" / "**" / "*.pt")
    ran = run("batch", pattern, *SPECTRUM, "-c", CONFIG, "-o", tmp_path / "out.jsonl")
    assert_one_error(ran, [pattern], folder=tmp_path, before=["runs"])
    assert listing(tmp_path / "runs") == []


# ----------------------------------------------------------------------------- trend, gates


def test_summary_lists_every_checkpoint_in_step_order_and_a_gate_fails_the_sweep(tmp_path):
    import torch

    copy([MLP[1], MLP[0], MLP[2]], tmp_path, ["a_step300.pt", "b_step20.pt", "c_step1000.pt"])
    # the step in the metadata wins over the number in the name
    torch.save({"model": torch.load(MLP[3]), "epoch": 7000}, tmp_path / "d_step5.pt")
    summary = tmp_path / "trend.md"
    ran = run("batch", str(tmp_path / "*.pt"), *SPECTRUM, "-c", CONFIG, "--summary", summary,
              "--fail-if", "lambda_max>0", "-o", tmp_path / "out.jsonl")
    assert ran.returncode == 1, ran.detail()  # all fine but the gate
    lines = by_name(read(tmp_path / "out.jsonl"))
    assert all(line["status"] == "ok" for line in lines.values())
    assert all(any(g["violated"] for g in line["gates"]) for line in lines.values())
    rows = [[cell.strip() for cell in row.strip().strip("|").split("|")]
            for row in summary.read_text().splitlines() if row.startswith("| `")]
    assert [Path(r[0].strip("`")).name for r in rows] == \
        ["b_step20.pt", "a_step300.pt", "c_step1000.pt", "d_step5.pt"]
    assert [r[1] for r in rows] == ["20", "300", "1000", "7000"]
    for r in rows:
        value = lines[Path(r[0].strip("`")).name]["results"]["top_eigenvalues"][0]
        assert r[2] == f"{value:.6g}"
        assert "lambda_max>0" in r[3]

    # without the gate: exit 0
    ran = run("batch", str(tmp_path / "*.pt"), *SPECTRUM, "-c", CONFIG, "-q")
    assert ran.returncode == 0, ran.detail()


def test_a_gate_applies_to_lines_kept_by_resume(tmp_path):
    """--fail-if applies to every checkpoint of the sweep, the reused ones too."""
    copy(MLP[:2], tmp_path, ["x1.pt", "x2.pt"])
    out = tmp_path / "out.jsonl"
    args = ["batch", str(tmp_path / "*.pt"), *SPECTRUM, "-c", CONFIG, "-o", out, "-q"]
    assert run(*args).returncode == 0
    ran = run(*args, "--fail-if", "lambda_max>0")
    assert ran.returncode == 1, ran.detail()


@pytest.mark.slow
def test_worker_processes_write_the_lines_one_worker_does(tmp_path):
    """-j 2: two processes, each with its own model and data and its share of the cores; the
    finished file holds the lines in the checkpoints' order. The numbers' contract (README,
    Determinism), on any machine: ``settings.threads`` says how many threads each line ran on;
    the same threads give the same line byte for byte, and other threads the same numbers
    within their reported errors (float32 sums in another order)."""
    import torch

    copy(MLP[:3], tmp_path, ["w1.pt", "w2.pt", "w10.pt"])
    two = tmp_path / "two.jsonl"
    ran = run("batch", tmp_path / "w*.pt", *SPECTRUM, "-c", CONFIG, "-o", two, "-j", "2")
    assert ran.returncode == 0, ran.stderr
    assert names(read(two)) == ["w1.pt", "w2.pt", "w10.pt"]
    share = max(1, (os.cpu_count() or 1) // 2)
    assert [line["settings"]["threads"] for line in read(two)] == [share] * 3

    threads = torch.get_num_threads()
    same, own = tmp_path / "same.jsonl", tmp_path / "own.jsonl"
    try:
        torch.set_num_threads(share)
        assert run("batch", tmp_path / "w*.pt", *SPECTRUM, "-c", CONFIG, "-o", same).returncode == 0
    finally:
        torch.set_num_threads(threads)
    assert [stable(line) for line in read(same)] == [stable(line) for line in read(two)]

    assert run("batch", tmp_path / "w*.pt", *SPECTRUM, "-c", CONFIG, "-o", own).returncode == 0
    assert [line["settings"]["threads"] for line in read(own)] == [threads] * 3
    for alone, worker in zip(read(own), read(two)):
        a, b = alone["results"], worker["results"]
        for value, other, error, other_error in zip(a["top_eigenvalues"], b["top_eigenvalues"],
                                                    a["top_residuals"], b["top_residuals"]):
            assert abs(value - other) <= error + other_error, (value, other, error, other_error)


# ----------------------------------------------------------------------------- stopped sweeps

#: a trace that runs until a signal stops it, estimating as it goes
ENDLESS_TRACE = ("--command", "trace", "--rtol", "1e-12", "--max-hvps", "100000000",
                 "--set", "data.max_samples=200", "-q")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a zombie has ended: nothing left to reap it
    in some containers)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_a_sigterm_writes_the_checkpoint_in_progress_as_interrupted(tmp_path):
    folder = tmp_path / "ckpts"
    copy(MLP[:2], folder, ["ck1.pt", "ck2.pt"])
    local_config(folder)
    out = tmp_path / "out.jsonl"
    proc = start_process(["batch", str(folder / "*.pt"), *ENDLESS_TRACE, "-o", str(out)],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        _until(lambda: proc.poll() is not None or _cpu_seconds(proc.pid) >= 8, 120,
               "the sweep did not get going within 120 s")
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted by SIGTERM"), stderr
    (line,) = read(out)  # the first checkpoint, stopped part-way, and nothing after it
    assert Path(line["checkpoint"]["path"]).name == "ck1.pt"
    assert line["status"] == "interrupted" and line["batch_key"]
    assert line["results"]["probes"] > 0 and line["results"]["converged"] is False
    assert any(w.startswith("interrupted: the estimate after") for w in line["warnings"])


def test_a_resumed_sweep_computes_an_interrupted_line_again(tmp_path, analysed):
    folder = tmp_path / "ckpts"
    copy(MLP[:2], folder, ["ck1.pt", "ck2.pt"])
    out = tmp_path / "out.jsonl"
    args = ["batch", str(folder / "*.pt"), *SPECTRUM, "-c", CONFIG, "-q", "-o", out]
    assert run(*args).returncode == 0
    first, second = read(out)
    out.write_text(json.dumps(first) + "\n" + json.dumps({**second, "status": "interrupted"}) + "\n")
    analysed.clear()
    assert run(*args).returncode == 0
    assert analysed == ["ck2.pt"]
    assert [stable(line) for line in read(out)] == [stable(first), stable(second)]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_workers_end_with_their_parent_killed_by_sigkill(tmp_path):
    folder = tmp_path / "ckpts"
    copy(MLP[:3], folder, ["ck1.pt", "ck2.pt", "ck3.pt"])
    local_config(folder)
    proc = start_process(["batch", str(folder / "*.pt"), *ENDLESS_TRACE, "-j", "2", "-o",
                          str(tmp_path / "out.jsonl")], cwd=tmp_path, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def busy_workers() -> list[int]:
            assert proc.poll() is None, "the sweep ended by itself"
            return [p for p in _children(proc.pid) if _alive(p) and _cpu_seconds(p) >= 4]

        _until(lambda: len(busy_workers()) >= 2, 180, "two workers did not start within 180 s")
        children = _children(proc.pid)  # the two workers and multiprocessing's resource tracker
        assert len(children) >= 3, children
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        _until(lambda: not any(_alive(p) for p in children), 10,
               f"still running 10 s after their parent: {[p for p in children if _alive(p)]}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever the test left of the session it started
        proc.wait(timeout=30)
