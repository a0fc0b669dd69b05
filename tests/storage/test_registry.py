"""Sidecar kinds come from one registry; adding a kind is one registration."""

import numpy as np
import pytest

from tidepool_cli.ops.stats import stats
from tidepool_cli.storage import manifest, sidecars
from tidepool_cli.storage.container import write_container
from tidepool_cli.storage.manifest import FileRef, known_features
from tidepool_cli.storage.sidecars import SIDECARS, SidecarKind, register

from storage_helpers import make_index


@pytest.fixture()
def toy_kind():
    """A toy sidecar kind (the mean vector of a segment), registered for one test."""

    def write(layout, entry, mean, params):
        path = layout.new_segment_file(entry.name, "mean")
        nbytes, crc = write_container(path, b"MEAN", 1, {"segment": entry.name, "rows": entry.rows}, {"mean": mean})
        return FileRef(layout.rel(path), nbytes, crc, params)

    kind = register(SidecarKind("mean", "mean", b"MEAN", 1, lambda c: c.array("mean"), write))
    yield kind
    SIDECARS.pop("mean")
    manifest._known_features.discard("sidecar.mean")


def test_one_registration_makes_a_kind_known_everywhere(tmp_path, toy_kind):
    assert "sidecar.mean" in known_features()
    idx = make_index(tmp_path, wal_files=0)
    from tidepool_cli.ops.view import IndexView
    from tidepool_cli.storage.manifest import read_current
    from tidepool_cli.storage.publish import publish
    from dataclasses import replace

    view = IndexView(idx)
    seg = view.segments[0]
    ref = toy_kind.writer(view.layout, seg.entry, np.asarray(seg.vectors).mean(axis=0), {"note": "toy"})

    def attach(current):
        entry = replace(current.segments[0], indexes={"mean": ref})
        return {"segments": (entry,)}

    publish(view.layout, "test", 5.0, attach)
    assert read_current(view.layout).features() == ["sidecar.mean"]
    np.testing.assert_allclose(sidecars.open_sidecar(view.layout, read_current(view.layout).segments[0], "mean"), np.asarray(seg.vectors).mean(axis=0))
    report = stats(idx, verify=True)
    assert report.problems == [] and report.bytes_by_kind["mean"] == ref.bytes
    assert report.segments[0].indexes["mean"]["note"] == "toy"


def test_clashing_registrations_are_refused(toy_kind):
    with pytest.raises(ValueError, match="clashes"):
        register(SidecarKind("other", "mean", b"OTHR", 1, lambda c: None, lambda *a: None))
    with pytest.raises(ValueError, match="clashes"):
        register(SidecarKind("other", "oth", b"HNSW", 1, lambda c: None, lambda *a: None))
