"""tidepool: a vector database in one directory, driven from the command line.

The Python API mirrors the subcommands: one function per subcommand, named as it is
(``build-hnsw`` is :func:`build_hnsw`), whose keyword arguments are the command's flags
(``--ef-construction`` is ``ef_construction=``). Each returns a dataclass (the JSON that
``--json`` prints is its ``to_dict()``)::

    import tidepool_cli as tp
    tp.ingest("idx", "vectors.npy")           # or input="vectors.parquet", vector_column="emb"
    tp.compact("idx")
    tp.build_hnsw("idx", m=16)
    res = tp.query("idx", xq, k=10, filter="color = 'red'")
    tp.get("idx", id=[7, 8]).rows()
    tp.count("idx", filter="price < 10").count
    tp.export("idx", "rows.parquet")

ingest, delete, compact, build_hnsw, build_ivf, query, get, export, count, stats:
    the subcommands. query_file and Searcher: batched querying with one open snapshot.

Functions are imported lazily so that ``tidepool --help`` starts fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "ingest": "tidepool_cli.api",
    "delete": "tidepool_cli.api",
    "compact": "tidepool_cli.ops.compact",
    "build_hnsw": "tidepool_cli.ops.build_hnsw",
    "build_ivf": "tidepool_cli.ops.build_ivf",
    "query": "tidepool_cli.api",
    "get": "tidepool_cli.ops.get",
    "export": "tidepool_cli.ops.export",
    "count": "tidepool_cli.ops.select",
    "stats": "tidepool_cli.ops.stats",
    "query_file": "tidepool_cli.ops.query",
    "Searcher": "tidepool_cli.ops.query",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tidepool_cli' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    # help(tidepool_cli) lists the lazily imported functions too
    return sorted(__all__)
