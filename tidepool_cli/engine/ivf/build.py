"""Building an IVF index: train the coarse quantizer, assign the rows, compress the lists."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tidepool_cli.engine import idcodec
from tidepool_cli.engine.distances import check_metric
from tidepool_cli.engine.ivf.index import IvfIndex, check_int, default_nlist
from tidepool_cli.engine.kmeans import assign, kmeans
from tidepool_cli.errors import InvalidInputError

NITER = 10
"""Lloyd iterations of the coarse quantizer (faiss trains IVF quantizers with 10 as well)."""

MAX_POINTS_PER_CENTROID = 64
"""Training rows per centroid. On glove-50-angular, recall@10 at the default nprobe is
0.003 below faiss' 256 for a quarter of the k-means work; 32 loses more and leaves the
lists less balanced (docs/IVF.md)."""

ASSIGN_ROWS = 65536
"""Rows assigned per call while building: bounds memory and paces ``progress``."""


def build_ivf(
    x: np.ndarray,
    metric: str,
    *,
    nlist: int | None = None,
    codec: str = "ans",
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> IvfIndex:
    """Train the coarse quantizer, assign every row and compress the posting lists.

    Parameters
    ----------
    x : (n, d) float32
        The segment's vectors (a read-only ``numpy.memmap`` is fine: it is read in
        sequential blocks). For cosine they must already be unit rows.
    metric : {"l2", "cosine", "dot"}
    nlist : int, optional
        Number of posting lists, ``1 <= nlist <= n``; :func:`default_nlist` if None.
    codec : str
        ID codec of the posting lists, one of :data:`~tidepool_cli.engine.idcodec.CODEC_NAMES`.
    seed : int
        Seed of k-means; equal seeds and data give identical indexes.
    progress : callable(done: int, total: int), optional
        Called with non-decreasing ``done`` ending at ``done == total``; the units are
        estimated row passes (k-means iterations, then assignment, then encoding).

    Returns
    -------
    IvfIndex

    Raises
    ------
    InvalidInputError
        Unknown metric or codec, ``x`` not 2-D or empty, ``nlist`` out of range, or more
        rows than a codec can address (2**31 - 1).

    Notes
    -----
    Rows go to their nearest centroid by the metric's own distance, except for ``dot``,
    where both training and assignment use l2 geometry: every centroid is then the mean
    of its list, so ``q . c`` used when probing is the mean score of the list, and the
    lists stay balanced (inner-product assignment drains rows into long centroids).
    """
    check_metric(metric)
    idcodec.get_codec(codec)
    if x.ndim != 2 or x.shape[0] < 1:
        raise InvalidInputError(f"build_ivf needs a non-empty 2-D array, got shape {x.shape}")
    n = x.shape[0]
    if n > idcodec.MAX_UNIVERSE:
        raise InvalidInputError(f"an IVF index addresses at most {idcodec.MAX_UNIVERSE} rows, got {n}")
    nlist = default_nlist(n) if nlist is None else check_int(nlist, "nlist", 1, n)
    n_train = min(n, nlist * MAX_POINTS_PER_CENTROID)
    total = NITER * n_train + 2 * n
    report = progress or (lambda done, tot: None)
    report(0, total)
    centroids = kmeans(
        x, nlist, metric=metric, niter=NITER, seed=seed, max_points_per_centroid=MAX_POINTS_PER_CENTROID
    )
    done = NITER * n_train
    report(done, total)
    labels = np.empty(n, dtype=np.int32)
    geometry = "l2" if metric == "dot" else metric
    for s in range(0, n, ASSIGN_ROWS):
        labels[s : s + ASSIGN_ROWS] = assign(x[s : s + ASSIGN_ROWS], centroids, geometry)[0]
        report(done + min(s + ASSIGN_ROWS, n), total)
    sizes = np.bincount(labels, minlength=nlist)
    # A stable sort keeps each list's positions ascending, the order codecs and
    # tie-breaking expect.
    order = np.argsort(labels, kind="stable")
    lists = np.split(order, np.cumsum(sizes)[:-1])
    blob, offsets, crcs = idcodec.encode_lists(codec, lists, n)
    report(total, total)
    return IvfIndex(
        metric=metric,
        centroids=np.ascontiguousarray(centroids, dtype=np.float32),
        list_sizes=sizes.astype(np.uint32),
        codec=codec,
        blob=np.frombuffer(blob, dtype=np.uint8),
        offsets=np.asarray(offsets, dtype=np.uint64),
        crcs=np.asarray(crcs, dtype=np.uint32),
        universe=n,
    )
