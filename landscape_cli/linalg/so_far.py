"""The result so far of a long computation, kept current as it goes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class SoFar:
    """What a computation has so far, as a thunk it keeps current step by step: after an
    interruption, the caller can still report the result up to the last complete step."""

    def __init__(self):
        self.result: Callable[[], Any] | None = None

    def value(self) -> Any:
        """The result so far, or None before the first step."""
        return None if self.result is None else self.result()
