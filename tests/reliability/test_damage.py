"""Each kind of damage to a cache entry is found, quarantined and rebuilt: a damaged entry is never served."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.cache import Cache
from tests.helpers import cli
from tests.reliability.common import TALLY, no_traceback, project, snapshot, tree


def _flip(entry: Path) -> None:
    f = entry / "data" / "text.txt"
    data = bytearray(f.read_bytes())
    data[0] ^= 0x01  # same size: only a full check sees it
    f.write_bytes(bytes(data))


def _truncate(entry: Path) -> None:
    f = entry / "data" / "text.txt"
    f.write_bytes(f.read_bytes()[:2])


def _manifest(entry: Path, edit) -> None:
    path = entry / "artifact.json"
    path.write_text(edit(path.read_text()))


DAMAGE = {
    "byte flipped": _flip,
    "file truncated": _truncate,
    "extra file": lambda e: (e / "data" / "extra.bin").write_bytes(b"\0" * 10),
    "file deleted": lambda e: (e / "data" / "text.txt").unlink(),
    "manifest deleted": lambda e: (e / "artifact.json").unlink(),
    "manifest truncated": lambda e: _manifest(e, lambda t: t[: len(t) // 2]),
    "manifest {}": lambda e: _manifest(e, lambda t: "{}"),
    "manifest lacks files": lambda e: _manifest(e, lambda t: json.dumps({k: v for k, v in json.loads(t).items() if k != "files"})),
}


def _run(wf: Path, cache: Path, out: Path, capsys, *extra) -> tuple[int, str]:
    code = cli("run", wf, "--cache-dir", cache, "--output", out, *extra)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _key(cache: Path, out: Path, step: str) -> str:
    return json.loads((out / "run.json").read_text())["steps"][step]["key"]


@pytest.mark.parametrize("kind", list(DAMAGE))
@pytest.mark.parametrize("where", ["output", "input"])
def test_a_damaged_entry_is_quarantined_and_rebuilt_never_served(tmp_path, capsys, kind, where):
    wf = project(tmp_path / "proj")
    cache, out, ref_out = tmp_path / "cache", tmp_path / "out", tmp_path / "ref"
    # where=output: the damaged entry is copied to the outputs; where=input: a step about to run reads it
    step, extra = ("j", ()) if where == "output" else ("a", ("--set", "steps.b.suffix=X"))
    assert _run(wf, tmp_path / "ref-cache", ref_out, capsys, *extra)[0] == 0  # what an intact cache gives
    assert _run(wf, cache, out, capsys)[0] == 0
    before = snapshot(tmp_path, cache, out, ref_out, tmp_path / "ref-cache")
    key = _key(cache, out, step)
    DAMAGE[kind](cache / "artifacts" / key)
    TALLY["corrupt"] += 1

    code, text = _run(wf, cache, out, capsys, *extra)
    served = tree(out / "joined") != tree(ref_out / "joined") or tree(out / "model") != tree(ref_out / "model")
    TALLY["served"] += served
    assert code == 0, text
    assert not served, "the damaged entry reached the outputs or a step that read it"
    no_traceback(text, (out / "logs" / "run.log").read_text())
    assert f"cache entry {key[:12]} (step " in text and "is damaged" in text
    quarantined = list((cache / "quarantine").iterdir())
    assert [q.name.split(".")[0] for q in quarantined] == [key]  # moved aside, not deleted
    assert (quarantined[0] / "QUARANTINED.txt").exists()
    assert json.loads((out / "run.json").read_text())["steps"][step]["status"] == "ran"  # rebuilt
    assert Cache(cache).damaged() == {}
    assert cli("cache", "--cache-dir", cache, "verify") == 0
    no_traceback(capsys.readouterr().out)
    assert snapshot(tmp_path, cache, out, ref_out, tmp_path / "ref-cache") == before


@pytest.mark.parametrize("kind", ["manifest deleted", "manifest truncated", "manifest {}", "byte flipped"])
def test_cache_commands_find_and_repair_every_kind_of_damage(tmp_path, capsys, kind):
    wf = project(tmp_path / "proj")
    cache, out = tmp_path / "cache", tmp_path / "out"
    assert _run(wf, cache, out, capsys)[0] == 0
    key = _key(cache, out, "b")
    DAMAGE[kind](cache / "artifacts" / key)
    TALLY["corrupt"] += 1
    assert cli("cache", "--cache-dir", cache, "ls") == 0
    assert cli("cache", "--cache-dir", cache, "verify") == 1
    text = capsys.readouterr().out
    assert f"{key[:12]}" in text and "DAMAGED" in text and "5 artifacts checked, 1 damaged" in text
    assert cli("cache", "--cache-dir", cache, "gc", "--older-than", "1d") == 0
    assert cli("cache", "--cache-dir", cache, "verify", "--repair") == 0
    assert "moved to" in capsys.readouterr().out
    assert cli("cache", "--cache-dir", cache, "verify") == 0
    assert "4 artifacts checked, 0 damaged" in capsys.readouterr().out
    assert len(list((cache / "quarantine").iterdir())) == 1
    code, text = _run(wf, cache, out, capsys)
    assert code == 0 and "b (fake_append): finished" in text
    no_traceback(text)


def test_commit_quarantines_a_leftover_folder_at_its_key(tmp_path, capsys):
    """A folder at the final key that is no artifact (an older version's leftover) does not block the commit."""
    wf = project(tmp_path / "proj")
    cache = Cache(tmp_path / "cache")
    cache.claim()
    with cache.lock("k" * 64):
        with cache.workdir("k" * 64) as work:
            (work / "data" / "x.txt").write_text("new")
            (cache.artifacts / ("k" * 64) / "data").mkdir(parents=True)
            (cache.artifacts / ("k" * 64) / "data" / "old.txt").write_text("half")
            art = cache.commit("k" * 64, work, kind="dataset", step="s", pass_type="fake_source", meta={}, key_parts={})
    assert (art.path / "x.txt").read_text() == "new"
    assert len(list(cache.quarantine_dir.iterdir())) == 1
    assert wf.exists()
