"""Each command's result type, declared once (``results.base``); torch-free, so that
``landscape schema`` and ``--help`` start without it."""

from __future__ import annotations

from landscape_cli.results.base import Result
from landscape_cli.results.critical import CriticalPointResult
from landscape_cli.results.inspect import InspectResult
from landscape_cli.results.interpolate import InterpolateResult
from landscape_cli.results.sharpness import SharpnessResult
from landscape_cli.results.spectrum import SpectrumResult
from landscape_cli.results.trace import TraceResult

#: The result type of each command's report, by the report's ``command``.
RESULT_TYPES: dict[str, type[Result]] = {
    "spectrum": SpectrumResult,
    "trace": TraceResult,
    "sharpness": SharpnessResult,
    "interpolate": InterpolateResult,
    "classify-critical-point": CriticalPointResult,
    "inspect": InspectResult,
}
