"""Shell habits: completion scripts and choice-value completion, global flags anywhere, progress in rows, the Python API."""

import inspect
import os
import pydoc
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import tidepool_cli as tp
from tidepool_cli.cli.app import app
from tidepool_cli.cli.output import Settings


def complete(line: str) -> list[str]:
    """Completions bash would offer for ``line`` (the word being typed last), through the env-var protocol."""
    words = line.split(" ")
    env = dict(os.environ, _TIDEPOOL_COMPLETE="complete_bash", COMP_WORDS=line, COMP_CWORD=str(len(words) - 1))
    r = subprocess.run([sys.executable, "-m", "tidepool_cli"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o default -F"), ("zsh", "#compdef tidepool"), ("fish", "complete --command tidepool")])
def test_show_completion_prints_a_script_for_each_shell(shell, marker):
    # Typer names the shell itself (from the parent process); its test switch lets one be given.
    env = dict(os.environ, _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    r = subprocess.run([sys.executable, "-m", "tidepool_cli", "--show-completion", shell], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and marker in r.stdout and "_TIDEPOOL_COMPLETE" in r.stdout


def test_completion_offers_commands_options_and_choice_values():
    assert {"export", "get", "count", "build-hnsw", "build-ivf"} <= set(complete("tidepool "))
    assert complete("tidepool ingest idx --metric ") == ["l2", "cosine", "dot"]
    assert complete("tidepool build-ivf idx --id-codec ") == ["ans", "roc", "elias-fano", "raw"]
    assert complete("tidepool export idx --format ") == ["jsonl", "npy", "parquet"]
    assert "parquet" in complete("tidepool ingest idx --input-format ")
    assert {"--vector-column", "--id-column", "--quiet"} <= set(complete("tidepool ingest idx --"))


def test_global_options_work_after_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(Settings, "quiet", False)
    monkeypatch.setattr(Settings, "debug", False)
    np.save(tmp_path / "x.npy", np.eye(4, dtype=np.float32))
    r = CliRunner().invoke(app, ["ingest", str(tmp_path / "idx"), "--input", str(tmp_path / "x.npy"), "-q"])
    assert r.exit_code == 0 and r.stderr == ""
    monkeypatch.setattr(Settings, "quiet", False)
    r = CliRunner().invoke(app, ["stats", str(tmp_path / "nope"), "--debug"])
    assert r.exit_code == 3 and "Traceback" in r.stderr
    r = CliRunner().invoke(app, ["--quiet", "compact", str(tmp_path / "idx")])
    assert r.exit_code == 0 and r.stderr == ""


class Recorder:
    def __init__(self):
        self.events = []

    def start(self, label, total, unit):
        self.events.append(("start", label, total, unit))

    def advance(self, n):
        self.events.append(("advance", n))

    def finish(self):
        self.events.append(("finish",))


def test_progress_counts_rows_against_the_known_total(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((2500, 4), np.float32))
    rec = Recorder()
    tp.ingest(tmp_path / "idx", tmp_path / "x.npy", batch_rows=1000, progress=rec)
    assert rec.events[0] == ("start", "ingest", 2500, "rows")
    assert [e[1] for e in rec.events if e[0] == "advance"] == [1000, 1000, 500]
    rec = Recorder()
    tp.export(tmp_path / "idx", tmp_path / "o.npy", block_rows=1000, progress=rec)
    assert rec.events[0] == ("start", "export", 2500, "rows")
    assert sum(e[1] for e in rec.events if e[0] == "advance") == 2500
    tp.compact(tmp_path / "idx")
    rec = Recorder()
    tp.build_ivf(tmp_path / "idx", nlist=8, min_rows=0, progress=rec)
    starts = [e for e in rec.events if e[0] == "start"]
    assert starts and all(e[2] == 2500 and e[3] == "rows" for e in starts)
    assert sum(e[1] for e in rec.events if e[0] == "advance") == 2500


PRESENTATION = {"json_out", "format"}
"""CLI parameters that only choose how a result is printed (the API returns the dataclass)."""


def test_every_command_has_an_api_function_with_its_flags_as_keywords():
    for command in app.registered_commands:
        name = command.name or command.callback.__name__
        fn = getattr(tp, name.replace("-", "_"))
        flags = set(inspect.signature(command.callback).parameters) - PRESENTATION
        if name == "export":
            flags |= {"format"}  # export's format is what it writes, not how it prints
        assert flags <= set(inspect.signature(fn).parameters), (name, flags - set(inspect.signature(fn).parameters))
    text = pydoc.render_doc(tp, renderer=pydoc.plaintext)
    for command in app.registered_commands:
        assert f"\n    {(command.name or command.callback.__name__).replace('-', '_')}(" in text
