"""Table rows as a result type declares them (its ``ROWS``), read from a report's ``results``
dict: rendering never computes, so a row only picks, renames and labels what the document holds.

A column shows a key of its record (a plain string), an item of a list (:func:`item`) or a
label filled from the record (:func:`text`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Record = Mapping[str, Any]
Column = str | Callable[[Record], Any]
#: Column name → what it shows; a sequence of keys shows each under its own name.
Columns = Mapping[str, Column] | Sequence[str]


def item(key: str, index: int) -> Column:
    """The ``index``-th item of the list under ``key`` (``ci95_low`` is ``ci95[0]``)."""
    return lambda record: record[key][index]


def text(template: str) -> Column:
    """A label filled from the record's keys, e.g. ``"total ({method})"``."""
    return lambda record: template.format_map(record)


def _pick(record: Record, columns: Columns | None) -> dict[str, Any]:
    """The row of ``record`` for ``columns`` (all of its keys when None)."""
    if columns is None:
        return dict(record)
    named = columns.items() if isinstance(columns, Mapping) else ((k, k) for k in columns)
    return {name: record.get(c) if isinstance(c, str) else c(record) for name, c in named}


@dataclass(frozen=True)
class Row:
    """One row from the results themselves."""

    columns: Columns | None = None

    def rows(self, results: Record) -> list[dict[str, Any]]:
        return [_pick(results, self.columns)]


@dataclass(frozen=True)
class Each:
    """One row per item (a dict) of the list ``results[key]``; none when it is absent."""

    key: str
    columns: Columns | None = None

    def rows(self, results: Record) -> list[dict[str, Any]]:
        return [_pick(record, self.columns) for record in results.get(self.key) or []]


@dataclass(frozen=True)
class Keyed:
    """One row per entry of the dict ``results[key]``: the entry's name under ``name``, then
    the ``columns`` of its record (a dict)."""

    key: str
    name: str = "name"
    columns: Columns | None = None

    def rows(self, results: Record) -> list[dict[str, Any]]:
        return [{self.name: name, **_pick(record, self.columns)}
                for name, record in (results.get(self.key) or {}).items()]


@dataclass(frozen=True)
class Ranked:
    """One row per position of the parallel lists that ``lists`` names (column → key): the
    ``fixed`` columns, then the 1-based position in ``rank``, then the lists' items."""

    lists: Mapping[str, str]
    rank: str = "rank"
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def rows(self, results: Record) -> list[dict[str, Any]]:
        columns = {name: results.get(key) or [] for name, key in self.lists.items()}
        length = len(next(iter(columns.values())))
        return [{**self.fixed, self.rank: i + 1, **{name: values[i] for name, values in columns.items()}}
                for i in range(length)]


@dataclass(frozen=True)
class EachRanked:
    """For each item (a dict) of the list ``results[key]``, the rows of ``inner`` read from
    the item, each led by the item's ``columns``; none when the list is absent."""

    key: str
    columns: Columns
    inner: Ranked

    def rows(self, results: Record) -> list[dict[str, Any]]:
        return [{**_pick(record, self.columns), **row}
                for record in results.get(self.key) or [] for row in self.inner.rows(record)]


Rows = Row | Each | Keyed | Ranked | EachRanked


def table(results: Record, declared: Sequence[Rows]) -> list[dict[str, Any]]:
    """The rows of ``results``, part after part in the order declared."""
    return [row for part in declared for row in part.rows(results)]
