"""Parquet and Arrow IPC inputs: columns, types, nulls, streaming, and the message without pyarrow."""

import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from tidepool_cli.cli.app import app
from tidepool_cli.errors import InvalidInputError
from tidepool_cli.ops.ingest import ingest
from tidepool_cli.ops.inputs import read_input
from tidepool_cli.ops.view import IndexView

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _table(n=1000, d=8, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x, pa.table(
        {
            "id": pa.array([f"doc-{i}" for i in range(n)]),
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), d),
            "color": pa.array((["red", None, "blue", "green"] * n)[:n]).dictionary_encode(),
            "price": pa.array(([1.5, 2.0, None, 3.0] * n)[:n]),
            "count": pa.array(np.arange(n, dtype=np.uint32)),
            "ok": pa.array(([True, False] * n)[:n]),
            "tags": pa.array([[1, 2]] * n, pa.list_(pa.int8(), 2)).cast(pa.list_(pa.int8())),
            "blob": pa.array([b"x"] * n),
        }
    )


def _only_row_values(view, name):
    src = view.sources()[0]
    return src.column(name).python_values(np.arange(src.rows))


def test_parquet_rows_ids_and_attributes_arrive_exactly(tmp_path):
    x, t = _table()
    pq.write_table(t, tmp_path / "t.parquet", row_group_size=300)
    res = ingest(tmp_path / "idx", tmp_path / "t.parquet", batch_rows=256, vector_column="emb")
    assert (res.rows, res.records) == (1000, 7)  # row groups of 300 rows, each cut at 256
    view = IndexView(tmp_path / "idx")
    src = view.sources()[0]
    assert src.vectors.view(np.uint32).tolist() == x.view(np.uint32).tolist()
    assert src.ids.tolist() == [f"doc-{i}" for i in range(1000)]
    # the second list column and the binary column are skipped, every scalar one kept
    assert view.schema == {"color": "string", "count": "int", "ok": "bool", "price": "float"}
    assert _only_row_values(view, "color")[:4] == ["red", None, "blue", "green"]
    assert _only_row_values(view, "price")[:4] == [1.5, 2.0, None, 3.0]
    assert _only_row_values(view, "count")[-1] == 999


def test_default_vector_column_is_the_only_list_column(tmp_path):
    x, t = _table(n=50)
    pq.write_table(t.drop_columns(["tags"]), tmp_path / "t.parquet")
    ingest(tmp_path / "idx", tmp_path / "t.parquet")
    assert IndexView(tmp_path / "idx").settings.dim == 8
    pq.write_table(t, tmp_path / "two.parquet")
    with pytest.raises(InvalidInputError, match="emb, tags.*--vector-column"):
        ingest(tmp_path / "idx2", tmp_path / "two.parquet")
    assert not (tmp_path / "idx2").exists()


def test_arrow_file_and_stream_with_variable_lists_and_integer_ids(tmp_path):
    x = np.arange(600, dtype=np.float32).reshape(100, 6)
    t = pa.table({"key": pa.array(np.arange(100, 200), pa.int32()), "v": pa.array(x.tolist(), pa.list_(pa.float64()))})
    with pa.OSFile(str(tmp_path / "t.arrow"), "wb") as f, pa.ipc.new_file(f, t.schema) as w:
        w.write_table(t, max_chunksize=7)
    with pa.OSFile(str(tmp_path / "t.arrows"), "wb") as f, pa.ipc.new_stream(f, t.schema) as w:
        w.write_table(t, max_chunksize=9)
    batches = list(read_input(tmp_path / "t.arrow", batch_rows=40, id_column="key"))
    assert [b.vectors.shape[0] for b in batches] == [40, 40, 20] and batches[0].total == 100
    assert np.concatenate([b.ids for b in batches]).tolist() == list(range(100, 200))
    ingest(tmp_path / "idx", tmp_path / "t.arrows", id_column="key", batch_rows=30)
    src = IndexView(tmp_path / "idx").sources()[0]
    assert np.array_equal(src.vectors, x) and src.ids.tolist() == list(range(100, 200))


def test_arrow_stream_on_stdin_is_sniffed(tmp_path):
    t = pa.table({"v": pa.array(np.eye(3, dtype=np.float32).tolist(), pa.list_(pa.float32(), 3))})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    r = CliRunner().invoke(app, ["ingest", str(tmp_path / "idx"), "--input", "-"], input=sink.getvalue().to_pybytes())
    assert r.exit_code == 0, r.stderr
    assert IndexView(tmp_path / "idx").sources()[0].rows == 3


@pytest.mark.parametrize(
    "column, message",
    [
        (pa.array([[1.0, 2.0], [1.0]], pa.list_(pa.float32())), "row 1 has a vector of length 1"),
        (pa.array([[1.0, 2.0], None], pa.list_(pa.float32())), "row 1 has no vector"),
        (pa.array([[1.0, 2.0], [None, 1.0]], pa.list_(pa.float32())), "row 1: a vector holds a null"),
        (pa.array([["a"], ["b"]], pa.list_(pa.string())), "vectors must be numbers"),
    ],
)
def test_bad_vector_columns_are_refused_and_create_nothing(tmp_path, column, message):
    pq.write_table(pa.table({"v": column}), tmp_path / "t.parquet")
    with pytest.raises(InvalidInputError, match=message):
        ingest(tmp_path / "idx", tmp_path / "t.parquet")
    assert not (tmp_path / "idx").exists()


def test_bad_id_columns_are_refused(tmp_path):
    v = pa.array([[1.0], [2.0]], pa.list_(pa.float32(), 1))
    pq.write_table(pa.table({"v": v, "id": pa.array([1, None])}), tmp_path / "null.parquet")
    with pytest.raises(InvalidInputError, match="row 1 has a null id"):
        ingest(tmp_path / "idx", tmp_path / "null.parquet")
    pq.write_table(pa.table({"v": v, "id": pa.array(["a", ""])}), tmp_path / "empty.parquet")
    with pytest.raises(InvalidInputError, match="non-empty"):
        ingest(tmp_path / "idx", tmp_path / "empty.parquet")
    with pytest.raises(InvalidInputError, match="no column 'key'"):
        ingest(tmp_path / "idx", tmp_path / "empty.parquet", id_column="key")


def test_parquet_on_stdin_is_refused_with_a_hint(tmp_path):
    pq.write_table(pa.table({"v": pa.array([[1.0]], pa.list_(pa.float32(), 1))}), tmp_path / "t.parquet")
    r = CliRunner().invoke(app, ["ingest", str(tmp_path / "idx"), "--input", "-"], input=(tmp_path / "t.parquet").read_bytes())
    assert r.exit_code == 4 and "seekable file" in r.stderr


def test_without_pyarrow_the_command_says_how_to_install_it(tmp_path, monkeypatch):
    pq.write_table(pa.table({"v": pa.array([[1.0]], pa.list_(pa.float32(), 1))}), tmp_path / "t.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now raises ImportError
    r = CliRunner().invoke(app, ["ingest", str(tmp_path / "idx"), "--input", str(tmp_path / "t.parquet")])
    assert r.exit_code == 4
    assert r.stderr.strip().splitlines()[-1].startswith("Error: ") and "pip install 'tidepool-cli[parquet]'" in r.stderr
    assert not (tmp_path / "idx").exists()
