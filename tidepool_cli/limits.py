"""Limits on what input may claim and on build and search parameters.

Every limit is checked before anything is written, so an input beyond one is refused
with exit 4 (invalid input) and an option beyond one with exit 2 (usage). README.md
lists them under "Limits".
"""

from __future__ import annotations

MAX_DIM = 65_536
"""Largest vector dimension."""

MAX_INPUT_ROWS = 2**31 - 1
"""Most rows one input (file or stream) may hold or claim in its header."""

MAX_STRING_CHARS = 1_024
"""Longest string id, attribute name or string attribute value, in characters."""

MAX_JSON_DEPTH = 2
"""Deepest nesting a JSONL line may use: an object holding a flat ``vector`` list and a
flat ``attributes`` object. Deeper lines are refused without recursing into them."""

MAX_FILTER_DEPTH = 100
"""Deepest nesting of ``not`` and parentheses in a ``--filter`` expression."""

MAX_FILTER_CHARS = 100_000
"""Longest ``--filter`` expression, in characters."""

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
"""Range of integer ids and integer attributes (automatic ids included)."""

MAX_K = 10_000
"""Largest ``-k`` (neighbours per query)."""

MAX_EF = 100_000
"""Largest HNSW ``ef_construction`` and ``ef_search``."""

MAX_M = 256
"""Largest HNSW ``M`` (layer 0 keeps 2M neighbours per node)."""

MAX_NLIST = 1 << 20
"""Largest IVF ``nlist`` and ``nprobe``."""
