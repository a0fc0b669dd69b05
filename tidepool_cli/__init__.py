"""tidepool: a vector database in one directory, driven from the command line.

The Python API mirrors the subcommands::

    import tidepool_cli as tp
    tp.ingest("idx", "vectors.npy")
    tp.compact("idx")
    res = tp.query("idx", xq, k=10)

Functions are imported lazily so that ``tidepool --help`` starts fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "ingest": "tidepool_cli.ops.ingest",
    "delete": "tidepool_cli.ops.delete",
    "compact": "tidepool_cli.ops.compact",
    "query": "tidepool_cli.ops.query",
    "query_file": "tidepool_cli.ops.query",
    "Searcher": "tidepool_cli.ops.query",
    "stats": "tidepool_cli.ops.stats",
    "SearchParams": "tidepool_cli.ops.planner",
    "BatchExplain": "tidepool_cli.ops.query",
    "delivered_recall": "tidepool_cli.ops.recall_check",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tidepool_cli' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
