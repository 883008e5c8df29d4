"""Errors that reach the user as one line and an exit code (DESIGN §7)."""

from __future__ import annotations

EXIT_GATE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
#: the reader of stdout went away (``| head``): 128 + SIGPIPE, as for any Unix filter
EXIT_BROKEN_PIPE = 141


def one_line(text: str) -> str:
    """``text`` with every non-printable character escaped (a newline shows as ``\\n``): keys,
    global names and file names come from checkpoints, configs and the file system, and a
    newline or a terminal escape in one of them must not break an error's single line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (its type's name where it has none), cut at
    ``limit`` characters: how a warning or a refusal quotes what a library said."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def exception_line(exc: BaseException) -> str:
    """``Type: message`` on one line (torch and pydantic messages span several)."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def describe(exc: BaseException) -> str:
    """What a user reads of a failure, as one line: bad input (a ``LandscapeError``) is its
    own message; anything else is ``internal error: TYPE: MESSAGE``, a bug to report. The CLI
    prints it (bad input after ``error:``); a batch line holds it under ``error``."""
    if isinstance(exc, LandscapeError):
        return str(exc)
    return f"internal error: {one_line(exception_line(exc))}"


class LandscapeError(Exception):
    """Bad input: usage, config, checkpoint, data, or a loss that is not finite (exit 2). Its
    message is always one printable line (``one_line``)."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: object = ""):
        super().__init__(one_line(str(message)))


class ConfigError(LandscapeError):
    """A config file or key is wrong; the message names the file and the key."""

    def __init__(self, source: str, key: str | None, message: str):
        self.source, self.key = source, key
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


class CheckpointError(LandscapeError):
    """A checkpoint cannot be read, is unsafe, or does not fit the model."""


class DataError(LandscapeError):
    """The data cannot be loaded or is empty."""


class NumericalError(LandscapeError):
    """The loss, gradient or a Hessian-vector product is not finite."""


#: how allocators say they ran out (torch's CPU allocator, CUDA's, Python's)
_NO_MEMORY = ("can't allocate memory", "out of memory", "Cannot allocate memory")


class OutOfMemory(LandscapeError):
    """An allocation failed during the analysis: the memory budget plans the kept graph and
    the algorithms' vectors, not everything a model's passes allocate."""

    @classmethod
    def of(cls, exc: BaseException) -> OutOfMemory | None:
        """The one-line error for an allocation failure (None: ``exc`` is something else)."""
        if not isinstance(exc, MemoryError) and not any(s in str(exc) for s in _NO_MEMORY):
            return None
        return cls(f"out of memory during the analysis ({first_line(exc)}): the memory budget "
                   "covers the kept graph and the algorithms' vectors, not the model's own "
                   "passes; lower --memory-budget, or use --hvp-strategy stream (no kept graph), "
                   "fewer --top, or a smaller data.batch_size")


class Interrupted(BaseException):
    """SIGINT or SIGTERM asked the run to stop (``cli/entry.py`` raises it from the signal
    handler). A ``BaseException``, like KeyboardInterrupt, so that no handler of errors turns
    it into an error report; ``finally`` blocks still run. An analysis that has an estimate
    so far attaches it as ``partial`` on the way out, and the report is written with it."""

    def __init__(self, signum: int, name: str):
        self.exit_code = 128 + signum
        self.partial: object | None = None
        super().__init__(name)
