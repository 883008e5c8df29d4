"""A result type is declared once, as a dataclass whose fields say how the report shows them;
its JSON ``results``, gate numbers (``scalars``, ``GATES``), schema model (``report.schema``) and
table rows (``ROWS``, ``report.render``) all follow from the declaration.

    class DensityResult(Result):
        grid: list[float] = reported(required=True)
        negative_mass: float = reported(gate=True, required=True)
        notes: list[str] = internal()

Subclassing :class:`Result` makes the class a dataclass (keyword options such as ``kw_only=True``
go in the class statement). Every field is declared with :func:`reported` or :func:`internal`.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, dataclass_transform

from landscape_cli.results.rows import Row, Rows

_DECLARED = "landscape_cli.results"  # the field-metadata entry of a declaration


@dataclass(frozen=True)
class Key:
    """One ``results`` key: a field's name, its (resolved) type, and how the report treats it."""

    name: str
    type: Any
    gate: bool = False
    required: bool = False
    omit_none: bool = False

    @property
    def section(self) -> type[Result] | None:
        """The one result nested here (``X`` or ``X | None``, not a list of them), whose gate
        numbers are ours."""
        kind = self.type
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            present = [t for t in typing.get_args(kind) if t is not types.NoneType]
            kind = present[0] if len(present) == 1 else None
        return kind if isinstance(kind, type) and issubclass(kind, Result) else None


def reported(*, gate: bool = False, required: bool = False, omit_none: bool = False,
             **field_options: Any) -> Any:
    """A field written under ``results`` by its name, in declaration order.

    ``gate``: also a ``--fail-if`` number (left out of ``scalars`` while None: not measured).
    ``required``: the schema requires it (DESIGN §6 names it; every other key is optional there).
    ``omit_none``: left out of ``results`` while None (an optional section, e.g. ``--bottom``).
    Other options (``default``, ``init``, ...) go to :func:`dataclasses.field`.
    """
    declared = {"gate": gate, "required": required, "omit_none": omit_none}
    return dataclasses.field(**field_options, metadata={_DECLARED: declared})


def internal(**field_options: Any) -> Any:
    """A field the report does not write (notes behind ``warnings``, a flag behind a message)."""
    return dataclasses.field(**field_options, metadata={_DECLARED: None})


def numbered(prefix: str, values: Iterable[float]) -> dict[str, float]:
    """A numbered family of gate numbers, ``PREFIX_1, PREFIX_2, ...``; ``GATES`` names it
    ``PREFIX_N`` (``report.gates`` matches any number)."""
    return {f"{prefix}_{i}": value for i, value in enumerate(values, 1)}


def _plain(value: Any) -> Any:
    """``value`` as JSON holds it: nested results by their own keys, tuples as lists."""
    if isinstance(value, Result):
        return value.results()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _keys(cls: type) -> tuple[Key, ...]:
    """The declared keys of a dataclass, in declaration order."""
    module = vars(sys.modules[cls.__module__])
    keys = []
    for f in dataclasses.fields(cls):
        if _DECLARED not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name}: declare it with reported() or internal()")
        declared = f.metadata[_DECLARED]
        if declared is not None:
            # Annotations are strings here (PEP 563); only keys are resolved, as
            # typing.get_type_hints would, so an internal field may name a type imported for
            # type checking alone (one that would import torch).
            kind = eval(f.type, module) if isinstance(f.type, str) else f.type
            keys.append(Key(f.name, kind, **declared))
    return tuple(keys)


@dataclass_transform(field_specifiers=(reported, internal))
class Result:
    """A typed result: subclasses declare their fields; the report's views come from them."""

    #: The declared ``results`` keys (set for each subclass).
    KEYS: ClassVar[tuple[Key, ...]] = ()
    #: Every name ``scalars`` can hold, checked before a run: the gate keys, then
    #: ``DERIVED_GATES``, then the gates of nested sections (set for each subclass).
    GATES: ClassVar[tuple[str, ...]] = ()
    #: The names ``derived_scalars`` adds (``top_N`` for a :func:`numbered` family).
    DERIVED_GATES: ClassVar[tuple[str, ...]] = ()
    #: How ``report.render`` lays the ``results`` dict out as table rows.
    ROWS: ClassVar[tuple[Rows, ...]] = (Row(),)

    def __init_subclass__(cls, **dataclass_options: Any) -> None:
        super().__init_subclass__()
        dataclass(cls, **dataclass_options)
        cls.KEYS = _keys(cls)
        sections = (k.section.GATES for k in cls.KEYS if k.section is not None)
        cls.GATES = (*(k.name for k in cls.KEYS if k.gate), *cls.DERIVED_GATES,
                     *(name for gates in sections for name in gates))

    def results(self) -> dict[str, Any]:
        """The command-specific ``results`` of the JSON report: every key in declaration order
        (an ``omit_none`` key only when set)."""
        values = ((k, getattr(self, k.name)) for k in self.KEYS)
        return {k.name: _plain(value) for k, value in values if value is not None or not k.omit_none}

    def scalars(self) -> dict[str, float]:
        """Named numbers for gates, CSV summaries and batch trends: the gate keys that hold a
        number, ``derived_scalars``, and those of nested sections."""
        out = {k.name: v for k in self.KEYS if k.gate and (v := getattr(self, k.name)) is not None}
        out.update(self.derived_scalars())
        for k in self.KEYS:
            if k.section is not None and (section := getattr(self, k.name)) is not None:
                out.update(section.scalars())
        return out

    def derived_scalars(self) -> dict[str, float]:
        """Gate numbers that are no single key (declare their names in ``DERIVED_GATES``)."""
        return {}

    def warnings(self) -> list[str]:
        """What the user should know about how far to trust the numbers."""
        return []

