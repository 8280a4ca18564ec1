"""What a run writes to its log: progress lines people can read (sizes in MB, counts without exponents)."""

from __future__ import annotations

import io

from runner.console import RunConsole
from runner.render import format_size


def _log_of(tmp_path, total, steps, **kwargs) -> str:
    console = RunConsole(tmp_path / "run.log", stream=io.StringIO())  # not a terminal: lines, no live bar
    with console.progress(total, "copying model files", **kwargs) as bar:
        for n in steps:
            bar.advance(n)
    console.close()
    return (tmp_path / "run.log").read_text()


def test_byte_progress_is_logged_as_sizes(tmp_path):
    log = _log_of(tmp_path, 91617400, [90918800, 698600], unit="B")
    assert "copying model files: 99% (86.7 MB / 87.4 MB)" in log
    assert "copying model files: done 87.4 MB in" in log
    assert "e+07" not in log


def test_counts_are_logged_without_exponents(tmp_path):
    log = _log_of(tmp_path, 12_000_000, [6_000_000, 6_000_000])
    assert "50% (6000000/12000000)" in log and "done 12000000 in" in log
    assert "e+" not in log


def test_format_size_steps_by_1024():
    assert [format_size(n) for n in (512, 2048, 90918800, 3 * 1024**3)] == ["512 B", "2.0 KB", "86.7 MB", "3.0 GB"]
