"""``landscape batch``: a sweep of one analysis command over a set of checkpoints, one JSON line
each (DESIGN §8; ``landscape_cli.sweep``). The command's own options and the shared ones follow
``--command``, parsed by that command's own parser."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from landscape_cli.cli.common import OUTPUT_OPTIONS, command_parser, fail, progress_bar, stderr
from landscape_cli.cli.signals import importing
from landscape_cli.commands import COMMANDS
from landscape_cli.errors import EXIT_BAD_INPUT, EXIT_GATE, LandscapeError
from landscape_cli.options import RunOptions

#: the commands a sweep runs: one checkpoint each
SWEEPABLE = tuple(name for name, spec in COMMANDS.items() if not spec.many)

HELP = ("Run one analysis over many checkpoints: one JSON line each, resumable, sharded, with "
        "the trend across training. Usage: landscape batch PATTERN... --command NAME "
        "[NAME's options]; PATTERN is a checkpoint, a quoted glob ('runs/**/*.pt', natural "
        "order) or - for paths on stdin (with --merge, the JSON-lines files to join).")
EPILOG = """Examples:

  landscape batch 'runs/**/*.pt' --command spectrum --top 1 -o spectra.jsonl

  find runs -name '*.ckpt' | landscape batch - --command sharpness --measures lambda_max -o s.jsonl

  landscape batch 'ckpts/*.pt' --command spectrum --shard 2/8 -o part2.jsonl

  landscape batch --merge part*.jsonl -o all.jsonl

  landscape batch 'ckpts/*.pt' --command spectrum --top 1 --lr 0.1 --summary trend.md --plot trend.png
"""


def _command_values(name: str, extra: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The shared and the command's own options in ``extra``, parsed by that command's parser
    (``landscape NAME --help`` lists them)."""
    command = command_parser(COMMANDS[name])
    context = command.make_context(f"landscape batch --command {name}", ["-", *extra])
    values = dict(context.params)
    output = {p.name for p in OUTPUT_OPTIONS} | {"checkpoint"}
    given_output = [k for k in output - {"checkpoint"} if values.get(k) not in (None, False)]
    if given_output:
        raise LandscapeError(f"--{given_output[0].replace('_', '-')}: batch writes JSON lines "
                             "itself (-o FILE, or stdout)")
    # a choice is an Enum made by the parser, which worker processes cannot unpickle: its string
    values = {k: v.value if isinstance(v, Enum) else v for k, v in values.items()}
    if values.get("save_vectors") is not None:  # one path for every checkpoint: the last wins
        raise LandscapeError("--save-vectors: a sweep would write every checkpoint's vectors to "
                             "one file; run spectrum --save-vectors on each checkpoint")
    shared = {k: values.pop(k) for k in list(values) if k in RunOptions.__dataclass_fields__}
    return shared, {k: v for k, v in values.items() if k not in output}


def _split(args: list[str]) -> tuple[list[str], list[str]]:
    """The leading arguments (checkpoints, globs, ``-``) and the options after them, which
    belong to ``--command``."""
    for i, arg in enumerate(args):
        if arg.startswith("-") and arg != "-":
            return args[:i], args[i:]
    return args, []


def register_batch(app: typer.Typer) -> None:
    @app.command("batch", help=HELP, epilog=EPILOG,
                 context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def batch_command(
        context: typer.Context,
        command: Annotated[str | None, typer.Option(
            "--command", help=f"The analysis to run: {', '.join(SWEEPABLE)}. Its options "
            "follow.")] = None,
        output: Annotated[Path | None, typer.Option(
            "--output", "-o", help="Append the lines to FILE (resumed when it exists).")] = None,
        resume: Annotated[bool, typer.Option(
            "--resume/--no-resume", help="Keep the lines of -o FILE whose key matches "
            "(checkpoint bytes, config, command options, seed, versions); compute the rest.")] = True,
        shard: Annotated[str | None, typer.Option(
            help="I/N: every N-th checkpoint of the sorted set from the I-th (Slurm arrays).")] = None,
        merge: Annotated[bool, typer.Option(
            "--merge", help="Join shard outputs (the PATTERNS) in checkpoint order into -o.")] = False,
        fail_fast: Annotated[bool, typer.Option(
            "--fail-fast", help="Stop at the first checkpoint that fails.")] = False,
        jobs: Annotated[int, typer.Option(
            "--jobs", "-j", help="Worker processes, each with its own model and data (one per "
            "GPU with --device cuda).")] = 1,
        summary: Annotated[Path | None, typer.Option(
            help="Write the trend as Markdown (for a CI job summary).", metavar="FILE")] = None,
        plot: Annotated[Path | None, typer.Option(
            help="Plot the main number against the training step (.png/.svg/.pdf).",
            metavar="FILE")] = None,
        lr: Annotated[float | None, typer.Option(
            help="With a spectrum sweep, --plot draws the edge of stability 2/η (a sharpness "
                 "sweep of stability_ratio draws its edge, 1, from the optimizer state).")] = None,
        follow: Annotated[bool, typer.Option(
            "--follow", help="Keep analysing the checkpoints the patterns match as they appear "
            "(complete ones only), until Ctrl-C or --until-idle.")] = False,
        until_idle: Annotated[str | None, typer.Option(
            help="With --follow: stop (exit 0) after this long without a new checkpoint: 30s, "
                 "10m, 2h.", metavar="DURATION")] = None,
        poll: Annotated[float, typer.Option(
            help="With --follow: seconds between two looks at the folder.", min=0.01)] = 1.0,
        log: Annotated[list[str] | None, typer.Option(
            help="Send each checkpoint's numbers, at its step, to a tracker: tensorboard:DIR, "
                 "mlflow:URI or wandb:PROJECT (repeatable; each an optional extra).",
            metavar="KIND:TARGET")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary.")] = False,
    ) -> None:
        patterns, extra = _split(context.args)
        try:
            watch = _Follow(until_idle, poll) if follow else None
            if until_idle is not None and not follow:
                raise LandscapeError("--until-idle goes with --follow")
            code = _batch(patterns, command, extra, output, resume, shard, merge, fail_fast, jobs,
                          summary, plot, lr, quiet, log or [], watch)
        except LandscapeError as exc:
            fail(exc)
        raise typer.Exit(code)


def _batch(patterns: list[str], command: str | None, extra: list[str], output: Path | None,
           resume: bool, shard_spec: str | None, merging: bool, fail_fast: bool, jobs: int,
           summary: Path | None, plot: Path | None, lr: float | None, quiet: bool,
           log: list[str], watch: _Follow | None = None) -> int:
    with importing():
        from landscape_cli.sweep import plan, trend, workers
    from landscape_cli.report import plot as plots
    from landscape_cli.report.output import appending, destination, write_file
    from landscape_cli.report.trend_view import markdown_summary

    def as_file(lines: list[dict[str, Any]]) -> str:
        return "".join(plan.as_line(line) + "\n" for line in lines)

    if merging:
        if output is None or not patterns:
            raise LandscapeError("--merge needs the shard files and -o FILE")
        files = [Path(p) for pattern in patterns for p in plan.discover([pattern])]
        dest = destination(output, "-o", files)
        merged = as_file(plan.merge(files))
        write_file(dest, lambda path: path.write_text(merged, encoding="utf-8"))
        return 0
    if command not in SWEEPABLE:
        raise LandscapeError(f"--command {command}: choose one of {', '.join(SWEEPABLE)}"
                             if command else f"--command is required: one of {', '.join(SWEEPABLE)}")
    if jobs < 1:
        raise LandscapeError(f"--jobs {jobs}: must be at least 1")
    if not patterns:
        raise LandscapeError("no checkpoints given (paths, quoted globs, or - for stdin)")
    shared, options = _command_values(command, extra)
    if watch is not None:
        if "-" in patterns or shard_spec:
            raise LandscapeError("--follow watches glob patterns; it takes neither - nor --shard")
        paths = []
    else:
        paths = plan.shard(plan.discover(patterns, sys.stdin if "-" in patterns else ()), shard_spec)
        if not paths:
            raise LandscapeError(f"--shard {shard_spec}: this shard holds no checkpoint")
    inputs = [Path(p) for p in paths]
    summary_to = None if summary is None else destination(summary, "--summary", inputs)
    output_to = None if output is None else destination(output, "-o", inputs)
    plot_to = None if plot is None else plots.check_destination(plot, inputs)
    trackers = []
    if log:
        from landscape_cli.integrations.loggers import Tracker

        trackers = [Tracker.parse(spec) for spec in log]
    from landscape_cli.engine import distributed

    # under torchrun every rank analyses every checkpoint (its share of the data), rank 0 writes
    lead = distributed.rank() == 0
    if jobs > 1 and distributed.launched():
        raise LandscapeError("--jobs: under torchrun the ranks already share each checkpoint's "
                             "work; leave -j out")
    show = lead and not quiet and stderr.is_terminal
    no_bar = nullcontext(lambda completed, note="": None)

    def writer(kept: str):
        return (nullcontext(lambda text: None) if not lead else _stdout(kept) if output_to is None
                else appending(output_to, kept))

    if watch is not None:
        lines = watch.run(patterns, lambda path: plan.Job(path, command, shared, options), output,
                          resume, writer, jobs, fail_fast)
        jobs_list = [plan.Job(line["checkpoint"]["path"], command, shared, options) for line in lines]
    else:
        jobs_list = [plan.Job(path, command, shared, options) for path in paths]
        sweep = plan.plan(jobs_list, output, resume)
        with writer(as_file(sweep.reused)) as write, (
                progress_bar("checkpoints", len(jobs_list)) if show else no_bar) as update:
            lines = workers.run_sweep(sweep, lambda text: write(text + "\n"), workers=jobs,
                                      fail_fast=fail_fast, progress=update)
    ordered = plan.in_order(lines, jobs_list)
    if not lead:
        return EXIT_BAD_INPUT if any(line["status"] == "error" for line in ordered) else 0
    if output_to is not None and ordered != lines:  # the finished file in the checkpoints' order
        finished = as_file(ordered)
        write_file(output_to, lambda path: path.write_text(finished, encoding="utf-8"))
    rows = trend.trend(ordered)
    text = markdown_summary(rows, command, trend.metric_of(rows, command), trend.first_at_edge(rows))
    if summary_to is not None:
        write_file(summary_to, lambda path: path.write_text(text, encoding="utf-8"))
    if plot_to is not None:
        plots.write_trend_plot(rows, command, lr, plot_to)
    for tracker in trackers:
        tracker.send(trend.in_training_order(ordered))
    if show:
        stderr.print(escape(text), soft_wrap=True)
    if any(line["status"] == "error" for line in ordered):
        return EXIT_BAD_INPUT
    return EXIT_GATE if any(row["failed"] for row in rows) else 0


@dataclass(frozen=True)
class _Follow:
    """``--follow``: poll the patterns, analyse each checkpoint once it is complete
    (``sweep/follow.py``), until Ctrl-C or ``--until-idle`` without a new one."""

    until_idle: str | None
    poll: float

    def run(self, patterns: list[str], job: Callable[[str], Any], output: Path | None, resume: bool,
            writer: Callable[[str], Any], jobs: int, fail_fast: bool) -> list[dict[str, Any]]:
        from landscape_cli.sweep import follow, plan, workers

        idle = None if self.until_idle is None else follow.duration(self.until_idle)
        watcher = follow.Watcher(list(patterns), self.poll)
        earlier = [] if output is None or not resume or not output.exists() else [
            line for line in plan.read_lines(output)[0] if line.get("status") != "interrupted"]
        lines: list[dict[str, Any]] = []
        with writer("".join(plan.as_line(line) + "\n" for line in earlier)) as write:
            quiet_since = time.monotonic()
            while idle is None or time.monotonic() - quiet_since < idle:
                ready = watcher.ready()
                if ready:  # reused lines are in the file already: only new ones are written
                    lines += workers.run_sweep(plan.plan([job(p) for p in ready], output, resume),
                                               lambda text: write(text + "\n"), workers=jobs,
                                               fail_fast=fail_fast)
                    quiet_since = time.monotonic()
                else:
                    time.sleep(self.poll)
        return lines


@contextmanager
def _stdout(kept: str) -> Iterator[Callable[[str], None]]:
    """The lines on stdout, the kept ones first, each flushed as it comes."""

    def echo(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    echo(kept)
    yield echo
