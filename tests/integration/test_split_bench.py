"""loadtest/split_bench.py measures what it says: one bad request in a merged batch of n costs
1 + 2 log2(n) runs, every request bad 2n - 1, and the figures are reported against the clean
batch of the same size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.split_bench import main


def test_a_short_run_reports_runs_and_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "split.json"
    assert main(["--sizes", "4,8", "--trials", "3", "--core", "-1", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["trials"] == 3
    for n, one_bad_runs in (("4", 5), ("8", 7)):
        cases = figures["sizes"][n]
        assert cases["clean"]["runs"] == 1
        assert cases["one bad"]["runs"] == one_bad_runs
        assert cases["all bad"]["runs"] == 2 * int(n) - 1
        assert cases["clean"]["makespan_ratio"] == 1.0
        assert cases["one bad"]["good_p50_ratio"] > 0
        assert cases["all bad"]["good_p50_ms"] is None  # no good caller
    printed = capsys.readouterr().out
    assert "| 8 | one bad | 7 |" in printed
