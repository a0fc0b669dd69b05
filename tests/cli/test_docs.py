"""README.md stays true: every command documented with an example, exit codes and JSON keys
match the code, and the quick tour runs as written."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from tidepool_cli import errors
from tidepool_cli.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_every_command_has_a_section_and_an_example():
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert names
    for name in names:
        assert f"### {name}" in README, name
        assert re.search(rf"^tidepool {name} ", README, re.M), name
        assert CliRunner().invoke(app, [name, "--help"]).exit_code == 0


def test_exit_code_table_matches_the_error_classes():
    table = dict(re.findall(r"^\| +(\d+) \| (.+?) \|$", README, re.M))
    codes = {cls.exit_code for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.TidepoolError)}
    assert codes - {1} <= {int(c) for c in table}, (codes, table)
    assert {"0", "1", "2"} <= set(table)


def _documented_keys(section):
    """JSON keys quoted in the `--json` description of a README command section."""
    text = README.split(f"### {section}", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    block = text[text.index("`--json` prints") :]
    return set(re.findall(r'"(\w+)"', block))


def test_quick_tour_runs_and_json_matches_the_documented_keys(tmp_path):
    shutil.copytree(ROOT / "sample_data", tmp_path / "sample_data")
    tour = README.split("## Quick tour", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for line in tour.strip().splitlines():
        cmd = line.split("  #")[0].strip()
        r = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert r.returncode == 0, (cmd, r.stderr)
    stats = json.loads(subprocess.run([sys.executable, "-m", "tidepool_cli", "stats", "idx", "--json"], cwd=tmp_path,
                                      capture_output=True, text=True).stdout)
    assert stats["live_rows"] == 9998 and stats["problems"] == []
    documented = _documented_keys("stats")
    nested = set(stats["wal"]) | set(stats["bytes_by_kind"]) | set(stats["segments"][0])
    assert set(stats) | nested == documented
    q = np.load(tmp_path / "sample_data" / "siftsmall_query.npy")[:1]
    r = CliRunner().invoke(app, ["query", str(tmp_path / "idx"), "--vector", json.dumps(q.tolist()), "-k", "2"])
    assert set(json.loads(r.stdout)["results"][0]) == {"query", "ids", "distances", "attributes"}


def test_mutation_commands_json_matches_the_documented_keys(tmp_path):
    np.save(tmp_path / "x.npy", np.eye(4, dtype=np.float32))
    idx = str(tmp_path / "idx")
    runs = {
        "ingest": ["ingest", idx, "--input", str(tmp_path / "x.npy"), "--json"],
        "delete": ["delete", idx, "--id", "1", "--json"],
        "compact": ["compact", idx, "--json"],
        "export": ["export", idx, "--output", str(tmp_path / "rows.jsonl"), "--json"],
        "count": ["count", idx, "--json"],
    }
    for section, args in runs.items():
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.stderr
        assert set(json.loads(r.stdout)) == _documented_keys(section), section


def test_documented_defaults_match_the_code():
    from tidepool_cli.engine.hnsw import FILTER_EXACT_BELOW, MIN_ROWS_FOR_GRAPH
    from tidepool_cli.ops.build_ivf import MIN_ROWS_FOR_IVF

    assert f"`--min-rows` rows (default {MIN_ROWS_FOR_GRAPH:,})" in README
    assert f"(default {MIN_ROWS_FOR_IVF:,})" in README
    assert f"less than {FILTER_EXACT_BELOW:.0%} of a segment" in README
    helps = {c.name: CliRunner().invoke(app, [c.name, "--help"], terminal_width=200).stdout for c in app.registered_commands}
    assert f"(default {MIN_ROWS_FOR_GRAPH})" in helps["build-hnsw"] and f"(default {MIN_ROWS_FOR_IVF})" in helps["build-ivf"]
