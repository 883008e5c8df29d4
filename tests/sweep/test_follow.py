"""``batch --follow`` (issue 30 §3): checkpoints written while it runs, one by a rename and one
slowly in pieces under its final name, are each analysed exactly once, after they are complete,
and ``--until-idle`` ends the run with exit 0."""

from __future__ import annotations

import json
import os
import subprocess
import time

from helpers.adversarial import assert_one_error
from helpers.runners import invoke, start_process
from helpers.samples import CONFIGS, MLP_CKPT

import landscape_cli.sweep.follow as follow

SPECTRUM = ("--command", "spectrum", "--top", "1", "--set", "data.max_samples=200",
            "-c", CONFIGS / "mlp.yaml")


def test_checkpoints_are_analysed_once_each_when_complete(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    out = tmp_path / "out.jsonl"
    data = MLP_CKPT.read_bytes()
    (run / "step1.pt").write_bytes(data)  # there before the follow starts
    process = start_process(["batch", run / "*.pt", *SPECTRUM, "-o", out, "--follow",
                             "--until-idle", "4s", "--poll", "0.2", "-q"], stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    (tmp_path / "partial").write_bytes(data)
    os.replace(tmp_path / "partial", run / "step2.pt")  # by a rename
    with open(run / "step3.pt", "wb") as slow:  # in pieces, the pauses longer than two polls
        for piece in range(4):
            slow.write(data[piece * len(data) // 4:(piece + 1) * len(data) // 4])
            slow.flush()
            time.sleep(0.8)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["checkpoint"]["path"].rsplit("/", 1)[1] for line in lines) == \
        ["step1.pt", "step2.pt", "step3.pt"]
    assert all(line["status"] == "ok" for line in lines), [line.get("error") for line in lines]


def test_a_half_written_zip_is_not_ready(tmp_path):
    data = MLP_CKPT.read_bytes()
    (tmp_path / "a.pt").write_bytes(data[: len(data) // 2])
    old = time.time() - 60
    os.utime(tmp_path / "a.pt", (old, old))  # even where its time says it was renamed in
    watcher = follow.Watcher([str(tmp_path / "*.pt")], poll_s=0.01)
    assert watcher.ready() == [] and watcher.ready() == []
    (tmp_path / "a.pt").write_bytes(data)
    os.utime(tmp_path / "a.pt", (old, old))
    assert watcher.ready() == []  # it changed since the last poll
    assert watcher.ready() == [str(tmp_path / "a.pt")]  # and then did not
    assert watcher.ready() == []  # handed over once


def test_bad_follow_options_are_one_line(tmp_path):
    assert_one_error(invoke(["batch", tmp_path / "*.pt", *SPECTRUM, "--follow", "--until-idle", "soon"]),
                     ["--until-idle soon", "30s"])
    assert_one_error(invoke(["batch", tmp_path / "*.pt", *SPECTRUM, "--until-idle", "5s"]), ["--follow"])
