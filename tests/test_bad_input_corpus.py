"""The bad-input corpus (tests/bad_inputs/corpus.yaml): every case gets one `error:` line naming what is wrong,
its exit code, and leaves nothing half-written."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from moesim.cli import app
from moesim.planning.store import ResultsStore

REPO = Path(__file__).resolve().parent.parent
CASES = yaml.safe_load((REPO / "tests" / "bad_inputs" / "corpus.yaml").read_text())
runner = CliRunner()


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        for path in sorted(folder.rglob("*"))
    }


def _furnish(folder: Path, files: dict[str, str]) -> None:
    """The files every case's folder holds, and the case's own."""
    (folder / "file.txt").write_text("not a folder\n")
    (folder / "file.sqlite").write_bytes(b"SQLite format 3\x00garbage" * 10)
    with sqlite3.connect(folder / "foreign.sqlite") as connection:
        connection.execute("CREATE TABLE x (a)")
        connection.execute("INSERT INTO x VALUES (1)")
    connection.close()
    ResultsStore(folder / "empty.sqlite").close()
    for name, text in files.items():
        (folder / name).write_bytes(text.encode("utf-8", "surrogateescape"))


def test_the_corpus_holds_at_least_150_distinct_cases() -> None:
    assert len(CASES) >= 150
    assert len({case["id"] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_a_bad_input_gets_one_line_its_exit_code_and_writes_nothing(case: dict, tmp_path: Path) -> None:
    _furnish(tmp_path, case["files"])
    before = _snapshot(tmp_path)
    arguments = [word.replace("{tmp}", str(tmp_path)).replace("{repo}", str(REPO)) for word in case["command"]]
    result = runner.invoke(app, arguments)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == case["exit"], result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert case["said"] in lines[0]
    assert "Traceback" not in result.output
    assert _snapshot(tmp_path) == before  # nothing created, nothing half-written, no store touched
