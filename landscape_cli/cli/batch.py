"""``landscape batch``: one analysis command over a set of checkpoints, one JSON line each
(DESIGN §8). The command's own options and the shared ones follow ``--command``, parsed by
that command's own parser."""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
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
            help="With a spectrum sweep, --plot draws the edge of stability 2/η.")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary.")] = False,
    ) -> None:
        patterns, extra = _split(context.args)
        try:
            code = _batch(patterns, command, extra, output, resume, shard, merge, fail_fast, jobs,
                          summary, plot, lr, quiet)
        except LandscapeError as exc:
            fail(exc)
        raise typer.Exit(code)


def _batch(patterns: list[str], command: str | None, extra: list[str], output: Path | None,
           resume: bool, shard_spec: str | None, merging: bool, fail_fast: bool, jobs: int,
           summary: Path | None, plot: Path | None, lr: float | None, quiet: bool) -> int:
    with importing():
        from landscape_cli import batch
    from landscape_cli.report import plot as plots
    from landscape_cli.report.output import destination, write_file

    if merging:
        if output is None or not patterns:
            raise LandscapeError("--merge needs the shard files and -o FILE")
        files = [Path(p) for pattern in patterns for p in batch.discover([pattern])]
        dest = destination(output, "-o", files)
        lines = batch.merge(files)
        write_file(dest, lambda path: path.write_text("".join(batch.as_line(line) + "\n"
                                                             for line in lines)))
        return 0
    if command not in SWEEPABLE:
        raise LandscapeError(f"--command {command}: choose one of {', '.join(SWEEPABLE)}"
                             if command else f"--command is required: one of {', '.join(SWEEPABLE)}")
    if jobs < 1:
        raise LandscapeError(f"--jobs {jobs}: must be at least 1")
    if not patterns:
        raise LandscapeError("no checkpoints given (paths, quoted globs, or - for stdin)")
    shared, options = _command_values(command, extra)
    paths = batch.shard(batch.discover(patterns, sys.stdin if "-" in patterns else ()), shard_spec)
    if not paths:
        raise LandscapeError(f"--shard {shard_spec}: this shard holds no checkpoint")
    for extra_file, option in ((summary, "--summary"), (output, "-o")):
        if extra_file is not None:
            destination(extra_file, option, [Path(p) for p in paths])
    plot_to = None if plot is None else plots.check_destination(plot, [Path(p) for p in paths])
    from landscape_cli.engine import distributed

    # under torchrun every rank analyses every checkpoint (its share of the data), rank 0 writes
    lead = distributed.rank() == 0
    if jobs > 1 and distributed.launched():
        raise LandscapeError("--jobs: under torchrun the ranks already share each checkpoint's "
                             "work; leave -j out")
    jobs_list = [batch.Job(path, command, shared, options) for path in paths]
    sweep = batch.plan(jobs_list, output, resume)
    show = lead and not quiet and stderr.is_terminal
    no_bar = nullcontext(lambda completed, note="": None)
    writer = _writer(output, [batch.as_line(line) for line in sweep.reused]) if lead else \
        nullcontext(lambda text: None)
    with writer as write, (progress_bar("checkpoints", len(jobs_list)) if show else no_bar) as update:
        lines = batch.run_sweep(sweep, write, workers=jobs, fail_fast=fail_fast, progress=update)
    ordered = batch.in_order(lines, jobs_list)
    if not lead:
        return EXIT_BAD_INPUT if any(line["status"] == "error" for line in ordered) else 0
    if output is not None and ordered != lines:  # the finished file in the checkpoints' order
        write_file(destination(output, "-o", []), lambda path: path.write_text(
            "".join(batch.as_line(line) + "\n" for line in ordered), encoding="utf-8"))
    rows = batch.trend(ordered)
    if summary is not None:
        text = batch.markdown_summary(rows, command)
        write_file(destination(summary, "--summary", []), lambda path: path.write_text(text))
    if plot_to is not None:
        plots.write_trend_plot(rows, command, lr, plot_to)
    if show:
        stderr.print(escape(batch.markdown_summary(rows, command)), soft_wrap=True)
    if any(line["status"] == "error" for line in ordered):
        return EXIT_BAD_INPUT
    return EXIT_GATE if any(row["failed"] for row in rows) else 0


class _writer:
    """Appends one line at a time to FILE, flushed, so that a killed run keeps every line it
    wrote; the lines kept from a previous run are written first, into a new file that replaces
    the old one at once (a kill before that leaves the old file whole). Or prints to stdout."""

    def __init__(self, output: Path | None, kept: list[str]):
        self.output, self.kept = output, kept
        self.handle = None

    def __enter__(self):
        if self.output is None:
            for text in self.kept:
                sys.stdout.write(text + "\n")

            def echo(text: str) -> None:
                sys.stdout.write(text + "\n")
                sys.stdout.flush()

            return echo
        temporary = self.output.with_name(f".{self.output.name}.{os.getpid()}.tmp")
        temporary.write_text("".join(text + "\n" for text in self.kept), encoding="utf-8")
        os.replace(temporary, self.output)
        self.handle = open(self.output, "a", encoding="utf-8")

        def write(text: str) -> None:
            self.handle.write(text + "\n")
            self.handle.flush()

        return write

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()
