"""The live rows of a snapshot that pass a filter, per source: what get, count and export read.

One :class:`~tidepool_cli.ops.view.IndexView` (a manifest generation plus the WAL tail,
read-your-writes) and one parsed filter, evaluated once per source as a boolean mask.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tidepool_cli.engine.columns import Column
from tidepool_cli.engine.filters import check_filter, evaluate, parse_filter
from tidepool_cli.ops.view import IndexView, Source

BLOCK_BYTES = 4 << 20
"""float32 vector bytes of a source visited per block by streaming readers (bounds their memory)."""


def matching(view: IndexView, filter: str | None = None) -> list[tuple[Source, np.ndarray]]:
    """Every source of ``view`` with the mask of its live rows that pass ``filter``.

    Parameters
    ----------
    view : IndexView
    filter : str, optional
        A filter expression (see :mod:`tidepool_cli.engine.filters`).

    Returns
    -------
    list of (Source, (rows,) bool)

    Raises
    ------
    FilterSyntaxError
        The filter does not parse or names an unknown attribute (exit 4).
    """
    expr = None
    if filter:
        expr = parse_filter(filter)
        check_filter(expr, view.schema)
    return [(src, src.live if expr is None else src.live & evaluate(expr, src.column, src.rows)) for src in view.sources()]


@dataclass(frozen=True)
class RowBlock:
    """Consecutive selected rows of one source.

    Attributes
    ----------
    ids : (n,) int64 or str array
    vectors : (n, d) float32
        Copied out of the memory map (the block owns it).
    columns : dict of str to Column
        The attributes of these rows (absent: no row of the source has it).
    """

    ids: np.ndarray
    vectors: np.ndarray
    columns: dict[str, Column]

    @property
    def rows(self) -> int:
        """Rows in the block."""
        return int(self.ids.shape[0])

    def slice(self, start: int, stop: int) -> "RowBlock":
        """Rows ``start:stop`` of the block."""
        idx = np.arange(start, min(stop, self.rows))
        return RowBlock(self.ids[start:stop], self.vectors[start:stop], {n: c.take(idx) for n, c in self.columns.items()})


def blocks(selected: list[tuple[Source, np.ndarray]], schema: dict[str, str], block_rows: int | None = None) -> Iterator[RowBlock]:
    """The selected rows, source by source, in blocks of at most ``block_rows`` source rows.

    ``block_rows`` defaults to :data:`BLOCK_BYTES` of vectors.

    Only the block being yielded is in memory: vectors are gathered from the memory map
    block by block, and the map's pages are handed back to the kernel after each block
    (:func:`~tidepool_cli.storage.pages.release_pages`), so a pass over an index of any
    size keeps a constant resident size.

    Yields
    ------
    RowBlock
    """
    from tidepool_cli.storage.pages import release_pages

    for src, mask in selected:
        if not mask.any():
            continue
        step = block_rows or max(1, BLOCK_BYTES // (4 * max(1, src.vectors.shape[1])))
        columns = {name: col for name in schema if (col := src.column(name)) is not None}
        for s in range(0, src.rows, step):
            pos = s + np.flatnonzero(mask[s : s + step])
            if pos.size:
                yield RowBlock(np.asarray(src.ids)[pos], np.array(src.vectors[pos], np.float32), {n: c.take(pos) for n, c in columns.items()})
            release_pages(src.vectors[s : s + step])


def row_attributes(columns: dict[str, Column], n: int) -> list[dict[str, Any]]:
    """Per row, its attributes as a dict (missing ones omitted), for JSON output."""
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    idx = np.arange(n)
    for name, col in sorted(columns.items()):
        for d, v in zip(out, col.python_values(idx)):
            if v is not None:
                d[name] = v
    return out


def short_floats(vectors: np.ndarray) -> list[list[float]]:
    """float32 rows as Python floats that print as their shortest float32 text.

    ``0.1f`` becomes the float ``0.1`` (not ``0.10000000149011612``), which JSON prints as
    ``0.1`` and which reads back as the same float32 bits.
    """
    return np.asarray(vectors, np.float32).astype(str).astype(np.float64).tolist()


@dataclass(frozen=True)
class CountResult:
    """What ``tidepool count`` reports.

    Attributes
    ----------
    index : str
    count : int
        Live rows (segments plus WAL tail) that pass the filter.
    filter : str or None
    generation : int
        Manifest generation the count was taken on.
    """

    index: str
    count: int
    filter: str | None
    generation: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def count(index: str | Path, *, filter: str | None = None) -> CountResult:
    """Number of live rows of ``index`` that pass ``filter`` (all live rows without one).

    Reads one snapshot plus the WAL tail, as ``query`` does; never takes the lock.

    Raises
    ------
    IndexNotFoundError, CorruptIndexError, FilterSyntaxError
    """
    view = IndexView(index)
    n = sum(int(np.count_nonzero(mask)) for _, mask in matching(view, filter))
    return CountResult(str(index), n, filter, view.manifest.generation)
