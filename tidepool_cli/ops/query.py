"""``tidepool query``: k-NN over every segment and the WAL tail, with filters.

A :class:`Searcher` opens one snapshot of the index, evaluates the filter once per
source (segment or WAL tail) as a mask combined with the source's live rows, and then
answers batches of queries: per source it picks an access path (see
:func:`tidepool_cli.ops.planner.search_source`), and merges the per-source top-k by
distance, ties broken by id.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tidepool_cli.engine.distances import prepare_queries
from tidepool_cli.engine.filters import check_filter, evaluate, parse_filter
from tidepool_cli.errors import InvalidInputError
from tidepool_cli.ops.inputs import read_input
from tidepool_cli.ops.paths import SourceWork
from tidepool_cli.ops.planner import SearchParams, search_source
from tidepool_cli.ops.querystream import stdin_is_lines, stream_lines
from tidepool_cli.ops.view import IndexView, Source

QUERY_BATCH_ROWS = 4096
"""Queries read and answered per batch from a file or stdin."""


@dataclass(frozen=True)
class BatchExplain:
    """What answering one query batch did (``query --explain``; JSON schema in README.md).

    Attributes
    ----------
    first : int
        Number of the batch's first query in the whole input.
    queries : int
        Queries in the batch.
    k : int
    recall_target : float or None
        The recall@10 asked for (None: each segment's build target).
    sources : list of SourceWork
        Per source (segment or WAL tail): path, knobs, work and time.
    seconds : float
        Wall time of the whole batch, merge and id/attribute lookup included.
    """

    first: int
    queries: int
    k: int
    recall_target: float | None
    sources: list[SourceWork]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"first": self.first, "queries": self.queries, "k": self.k, "recall_target": self.recall_target,
                "sources": [w.to_dict() for w in self.sources], "seconds": float(f"{self.seconds:.3g}")}


@dataclass(frozen=True)
class QueryResults:
    """Answers to a batch of queries.

    Attributes
    ----------
    metric : str
        Metric of the index (defines what the distances are).
    first : int
        Number of the first query of the batch in the whole input (0-based).
    ids : list of list
        Per query, up to k external ids (int or str), nearest first.
    distances : (nq, k') float32
        Their distances (see README: squared L2, 1 - cosine, or negated dot product).
    attributes : list of list of dict
        Per query and result, the row's attributes (missing ones omitted).
    paths : dict of str to str
        Access path used per source ("exact", "hnsw", "ivf", "exact-filtered").
    explain : BatchExplain or None
        What each source did for this batch.
    """

    metric: str
    first: int
    ids: list[list[Any]]
    distances: np.ndarray
    attributes: list[list[dict[str, Any]]]
    paths: dict[str, str]
    explain: BatchExplain | None = None

    def to_dicts(self) -> list[dict[str, Any]]:
        """JSON form: one object per query (the schema documented in README.md)."""
        out = []
        for i, ids in enumerate(self.ids):
            out.append(
                {
                    "query": self.first + i,
                    "ids": ids,
                    "distances": [float(x) for x in self.distances[i, : len(ids)]],
                    "attributes": self.attributes[i],
                }
            )
        return out


class Searcher:
    """Answers k-NN queries on one snapshot of an index.

    Parameters
    ----------
    index : str or Path
    filter : str, optional
        A filter expression (see :mod:`tidepool_cli.engine.filters`).
    params : SearchParams, optional
        Access-path settings (``ef_search``, ``nprobe``, ``exact``).
    warn : callable(str), optional
        Receives warnings (e.g. a damaged sidecar index that is skipped).

    Raises
    ------
    IndexNotFoundError, CorruptIndexError, UnsupportedFormatError
    FilterSyntaxError
        The filter does not parse or names an unknown attribute.
    """

    def __init__(self, index: str | Path, *, filter: str | None = None, params: SearchParams | None = None, warn: Callable[[str], None] | None = None):
        self.view = IndexView(index)
        self.settings = self.view.settings
        self.params = params or SearchParams()
        self.warn = warn or (lambda msg: None)
        expr = None
        if filter:
            expr = parse_filter(filter)
            check_filter(expr, self.view.schema)
        self.sources: list[tuple[Source, np.ndarray]] = []
        for src in self.view.sources():
            allowed = src.live if expr is None else src.live & evaluate(expr, src.column, src.rows)
            if allowed.any():
                self.sources.append((src, allowed))
        self.n_allowed = [int(np.count_nonzero(a)) for _, a in self.sources]
        self.plans: list[dict] = [{} for _ in self.sources]

    def search(self, queries: np.ndarray, k: int, first: int = 0) -> QueryResults:
        """The k nearest live rows that pass the filter, for each query.

        Parameters
        ----------
        queries : (nq, d) array of a real dtype
        k : int
        first : int
            Number of the first query in the caller's input (reported back).

        Returns
        -------
        QueryResults

        Raises
        ------
        InvalidInputError
            Wrong dimension, NaN/Inf, zero query under cosine, k < 1.
        """
        if k < 1:
            raise InvalidInputError(f"k must be at least 1, got {k}")
        queries = np.asarray(queries)
        if queries.ndim != 2 or queries.shape[1] != self.settings.dim:
            raise InvalidInputError(f"queries have shape {queries.shape}; the index has dimension {self.settings.dim}")
        t0 = time.perf_counter()
        xq = prepare_queries(queries, self.settings.metric)
        nq = xq.shape[0]
        parts_d, parts_src, parts_pos, paths, work = [], [], [], {}, []
        for j, (src, allowed) in enumerate(self.sources):
            D, I, done = search_source(src, allowed, xq, k, self.settings.metric, self.params, self.warn, self.n_allowed[j], self.plans[j])
            paths[src.name] = done.path
            work.append(done)
            parts_d.append(D)
            parts_pos.append(I)
            parts_src.append(np.full(I.shape, j, np.int32))
        if not parts_d:
            explain = BatchExplain(first, nq, k, self.params.recall, work, time.perf_counter() - t0)
            return QueryResults(self.settings.metric, first, [[] for _ in range(nq)], np.zeros((nq, 0), np.float32), [[] for _ in range(nq)], paths, explain)
        D = np.concatenate(parts_d, axis=1)
        I = np.concatenate(parts_pos, axis=1)
        S = np.concatenate(parts_src, axis=1)
        ids = self._gather_ids(S, I)
        order = np.lexsort((ids, D), axis=1)[:, :k]
        D = np.take_along_axis(D, order, 1)
        I = np.take_along_axis(I, order, 1)
        S = np.take_along_axis(S, order, 1)
        res = self._results(first, D, I, S, paths)
        explain = BatchExplain(first, nq, k, self.params.recall, work, time.perf_counter() - t0)
        return dataclasses.replace(res, explain=explain)

    def _gather_ids(self, S: np.ndarray, I: np.ndarray) -> np.ndarray:
        """External ids of candidates (padding gets a value that sorts last among ties)."""
        if self.settings.id_type == "int":
            out = np.full(I.shape, np.iinfo(np.int64).max, np.int64)
        else:
            width = max([src.ids.dtype.itemsize // 4 for src, _ in self.sources] + [1])
            out = np.full(I.shape, "\U0010ffff", dtype=f"U{width}")
        for j, (src, _) in enumerate(self.sources):
            m = (S == j) & (I >= 0)
            out[m] = np.asarray(src.ids)[I[m]]
        return out

    def _results(self, first: int, D, I, S, paths) -> QueryResults:
        nq, k = I.shape
        ids: list[list[Any]] = [[] for _ in range(nq)]
        attrs: list[list[dict[str, Any]]] = [[] for _ in range(nq)]
        valid = I >= 0
        counts = valid.sum(axis=1)
        # Gather ids and attributes per source with array indexing, then lay them out.
        flat_ids = np.empty(I.shape, object)
        flat_attrs = np.empty(I.shape, object)
        for j, (src, _) in enumerate(self.sources):
            m = (S == j) & valid
            if not m.any():
                continue
            pos = I[m]
            flat_ids[m] = np.asarray(src.ids)[pos].tolist()
            row_attrs: list[dict[str, Any]] = [{} for _ in range(pos.size)]
            for name in self.view.schema:
                col = src.column(name)
                if col is None:
                    continue
                for d, v in zip(row_attrs, col.python_values(pos)):
                    if v is not None:
                        d[name] = v
            flat_attrs[m] = row_attrs
        for i in range(nq):
            c = int(counts[i])
            ids[i] = list(flat_ids[i, :c])
            attrs[i] = list(flat_attrs[i, :c])
        return QueryResults(self.settings.metric, first, ids, D, attrs, paths)


def query_file(index: str | Path, source: str | Path, k: int, *, input_format: str = "auto", filter: str | None = None,
               params: SearchParams | None = None, warn: Callable[[str], None] | None = None) -> Iterator[QueryResults]:
    """Answer every query vector of a file or stdin, batch by batch.

    JSONL on standard input is answered as it arrives
    (:func:`~tidepool_cli.ops.querystream.stream_lines`): each
    result is yielded as soon as its line is read, while lines that are already waiting
    are answered together as one batch. Files are read in :data:`QUERY_BATCH_ROWS` batches.

    Parameters
    ----------
    index : str or Path
    source : str or Path
        Query file (npy, fvecs, bvecs, or JSONL with a "vector" field) or ``-``.
    k : int
    input_format, filter, params, warn
        See :func:`~tidepool_cli.ops.inputs.read_input` and :class:`Searcher`.

    Yields
    ------
    QueryResults
    """
    searcher = Searcher(index, filter=filter, params=params, warn=warn)
    if str(source) == "-" and input_format in ("auto", "jsonl") and stdin_is_lines():
        batches = stream_lines(sys.stdin.buffer, QUERY_BATCH_ROWS)
    else:
        batches = ((b.first_row, b.vectors) for b in read_input(source, input_format, QUERY_BATCH_ROWS))
    answered = False
    for first, vectors in batches:
        answered = True
        yield searcher.search(vectors, k, first=first)
    if not answered:  # an empty input still gets a (empty) result
        yield searcher.search(np.zeros((0, searcher.settings.dim), np.float32), k)


def query(index: str | Path, vectors: np.ndarray, k: int, *, filter: str | None = None, params: SearchParams | None = None,
          warn: Callable[[str], None] | None = None) -> QueryResults:
    """Answer the query ``vectors`` ((nq, d) or (d,) array) against ``index``; see :class:`Searcher`."""
    vectors = np.asarray(vectors)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    return Searcher(index, filter=filter, params=params, warn=warn).search(vectors, k)
