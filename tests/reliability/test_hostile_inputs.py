"""Hostile but fair inputs: each is an exit-2 error (a failure: exit 1) with a message, never a traceback,
and nothing outside the tool's own files changes.

Workflow files that could hang or eat memory on a regression (FIFO, /dev/zero, deep nesting, a large
file) run the CLI in a subprocess with a timeout; the rest run in-process (any exception that escapes
`main` counts as a traceback). The module prints how many hostile inputs were tried and how many
gave a traceback (must be 0).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import FAKE_WORKFLOW, ROOT, cli, fake_project, write

TOTALS = {"tried": 0, "tracebacks": 0}


@pytest.fixture(scope="module", autouse=True)
def _report_totals(request):
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    line = f"hostile inputs tried: {TOTALS['tried']}, tracebacks: {TOTALS['tracebacks']}"
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{line}")


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under `folder`: kind, size and content digest (symlinks by target, FIFOs by kind only)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(folder).as_posix()
            if full.is_symlink():
                out[rel] = ("link", os.readlink(full))
            elif full.is_dir():
                out[rel] = ("dir",)
            elif full.is_file():
                out[rel] = ("file", hashlib.sha256(full.read_bytes()).hexdigest())
            else:
                out[rel] = ("special",)
    return out


def pipeline(*args, cwd: Path, env: dict | None = None, timeout: float = 60) -> tuple[int, str]:
    """`pipeline ARGS` in a fresh interpreter; a hang counts as a failure (exit -1)."""
    full_env = {**os.environ, "PIPELINE_PLUGINS": "tests.fakes", "PYTHONPATH": str(ROOT), **(env or {})}
    TOTALS["tried"] += 1
    try:
        done = subprocess.run([sys.executable, "-m", "runner.cli", *map(str, args)], capture_output=True, text=True,
                              env=full_env, cwd=cwd, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout} s"
    text = done.stdout + done.stderr
    TOTALS["tracebacks"] += "Traceback" in text
    return done.returncode, text


def pipeline_here(capsys, *args) -> tuple[int, str]:
    """`pipeline ARGS` in this process; an exception escaping `main` is a traceback."""
    TOTALS["tried"] += 1
    try:
        code = cli(*args)
    except BaseException as exc:  # noqa: BLE001 - exactly what must never happen
        TOTALS["tracebacks"] += 1
        captured = capsys.readouterr()
        return -2, f"{captured.out}{captured.err}Traceback: {type(exc).__name__}: {exc}"
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def assert_refused(code: int, text: str, *expected: str, exit_code: int = 2) -> None:
    assert code == exit_code, text
    assert "Traceback" not in text, text
    for part in expected:
        assert part in text, text


@pytest.fixture
def project(tmp_path) -> Path:
    """A project folder with the fake workflow (wf.yaml, in.txt)."""
    folder = tmp_path / "proj"
    folder.mkdir()
    fake_project(folder)
    return folder


# --- the workflow file itself ------------------------------------------------------------------------------

def _deep_flow(depth: int) -> str:
    return "version: 1\nname: t\nsteps: {}\nx: " + "[" * depth + "]" * depth + "\n"


def _deep_block(depth: int) -> str:
    lines = ["version: 1", "name: t", "steps: {}", "x:"]
    lines += [" " * (2 * i) + f"k{i}:" for i in range(1, depth)] + [" " * (2 * depth) + "k: 1"]
    return "\n".join(lines) + "\n"


def _alias_chain(levels: int) -> str:
    # each anchor nests the previous one 50 levels down: shallow in the file, deep once expanded
    lines = ["version: 1", "name: t", "steps: {}", "a0: &a0 1"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} " + "[" * 50 + f"*a{i - 1}" + "]" * 50)
    return "\n".join(lines) + "\n"


def _merge_chain(n: int) -> str:
    lines = ["version: 1", "name: t", "steps: {}", "m0: &m0 {x: 1}"]
    lines += [f"m{i}: &m{i} {{<<: *m{i - 1}}}" for i in range(1, n)]
    return "\n".join(lines) + "\n"


WORKFLOW_TEXTS = {
    "nesting 1000 deep (flow)": (_deep_flow(1000).encode(), "more than 100 levels deep", "wf.yaml:4:"),
    "nesting 300 deep (block)": (_deep_block(300).encode(), "more than 100 levels deep", "wf.yaml:"),
    "aliases nesting 1000 deep": (_alias_chain(20).encode(), "levels deep", "wf.yaml:"),
    "merge keys chained 2000 times": (_merge_chain(2000).encode(), "levels deep", "wf.yaml:"),
    "non-UTF-8 bytes": (b"version: 1\nname: caf\xe9\nsteps: {}\n", "not UTF-8", "wf.yaml:2:10"),
    "a NUL byte": (b"version: 1\nname: t\x00\nsteps: {}\n", "wf.yaml", ""),
    "a 5 MB file": (b"# padding\n" * 500_000, "larger than 4194304 bytes", "PIPELINE_MAX_WORKFLOW_BYTES"),
}


@pytest.mark.parametrize("case", list(WORKFLOW_TEXTS))
def test_hostile_workflow_file_is_exit_2(tmp_path, case):
    body, *expected = WORKFLOW_TEXTS[case]
    (tmp_path / "wf.yaml").write_bytes(body)
    before = snapshot(tmp_path)
    t0 = time.monotonic()
    code, text = pipeline("validate", tmp_path / "wf.yaml", cwd=tmp_path)
    assert_refused(code, text, *expected)
    assert time.monotonic() - t0 < 30  # refused before it is built, not after minutes
    assert snapshot(tmp_path) == before


def test_size_limit_is_configurable(tmp_path):
    wf = fake_project(tmp_path)
    code, text = pipeline("validate", wf, cwd=tmp_path, env={"PIPELINE_MAX_WORKFLOW_BYTES": "64"})
    assert_refused(code, text, "wf.yaml:1:1: the file is larger than 64 bytes")
    code, text = pipeline("validate", wf, cwd=tmp_path, env={"PIPELINE_MAX_WORKFLOW_BYTES": "lots"})
    assert_refused(code, text, "PIPELINE_MAX_WORKFLOW_BYTES='lots' is not a positive number")
    code, text = pipeline("validate", wf, cwd=tmp_path, env={"PIPELINE_MAX_WORKFLOW_BYTES": "1000000"})
    assert code == 0, text


def test_too_many_values_has_its_own_message(tmp_path, capsys, monkeypatch):
    import pipelines.yaml_loader as loader

    monkeypatch.setattr(loader, "MAX_NODES", 1000)
    wf = write(tmp_path, "version: 1\nname: t\nsteps: {}\nx:\n" + "- 1\n" * 2000)
    code, text = pipeline_here(capsys, "validate", wf)
    assert_refused(code, text, "more than 1000 values")
    assert "alias" not in text  # the file has none: do not blame them


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _loop(path: Path) -> Path:
    other = path.with_name(path.name + "-other")
    os.symlink(other, path)
    os.symlink(path, other)
    return path


SPECIAL_WORKFLOWS = {
    "a FIFO": (_fifo, "named pipe (FIFO), not a workflow file"),
    "/dev/zero": (lambda p: Path("/dev/zero"), "a device, not a workflow file"),
    "a folder": (lambda p: p.parent, "a folder, not a workflow file"),
    "a symlink loop": (_loop, "cannot read the workflow"),
}


@pytest.mark.parametrize("case", list(SPECIAL_WORKFLOWS))
def test_special_file_as_workflow_is_exit_2(tmp_path, case):
    make, expected = SPECIAL_WORKFLOWS[case]
    folder = tmp_path / "w"
    folder.mkdir()
    path = make(folder / "wf.yaml")
    before = snapshot(tmp_path)
    code, text = pipeline("run", path, "--output", tmp_path / "out", cwd=folder, timeout=30)
    assert_refused(code, text, expected)
    assert snapshot(tmp_path) == before


# --- data paths -------------------------------------------------------------------------------------------

SPECIAL_DATA = {
    "a symlink loop": (lambda p: _loop(p / "loop").name, "is a symlink loop"),
    "a FIFO": (lambda p: _fifo(p / "pipe").name, "is a named pipe (FIFO), not a file or folder"),
    "/dev/zero": (lambda p: "/dev/zero", "is a device, not a file or folder"),
    "a NUL in the name": (lambda p: "in\\0.txt", "cannot be resolved"),
}


@pytest.mark.parametrize("case", list(SPECIAL_DATA))
def test_special_data_path_is_exit_2_at_its_line(project, tmp_path, case):
    make, expected = SPECIAL_DATA[case]
    value = make(project)
    write(project, FAKE_WORKFLOW.replace("path: in.txt", f'path: "{value}"'))
    before = snapshot(tmp_path)
    for command in ("validate", "run"):
        code, text = pipeline(command, project / "wf.yaml", cwd=project, timeout=30)
        assert_refused(code, text, "wf.yaml:5:34: steps.src.path", expected)
    assert snapshot(tmp_path) == before


def test_fifo_inside_a_data_folder_fails_the_step_instead_of_hanging(project, tmp_path):
    (project / "data").mkdir()
    (project / "data" / "in.txt").write_text("x")
    _fifo(project / "data" / "pipe")
    write(project, FAKE_WORKFLOW.replace("path: in.txt", "path: data"))
    code, text = pipeline("run", project / "wf.yaml", "--output", tmp_path / "out", cwd=project, timeout=60)
    assert_refused(code, text, "is not a regular file", exit_code=1)


# --- names ------------------------------------------------------------------------------------------------

PATH_LIKE_STEPS = ['"../evil"', '"a/b"', '"."', '"/etc"', '"a\\\\b"']


@pytest.mark.parametrize("name", PATH_LIKE_STEPS)
def test_path_like_step_name_is_exit_2(project, tmp_path, capsys, name):
    write(project, FAKE_WORKFLOW.replace("  src:", f"  {name}:").replace("data: src", f"data: {name}"))
    before = snapshot(tmp_path)
    code, text = pipeline_here(capsys, "run", project / "wf.yaml", "--output", tmp_path / "out")
    assert_refused(code, text, "wf.yaml:5:3: steps.", "invalid step name")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("flag, value", [("--force", "../src"), ("--only", "/etc/passwd"), ("--only", "src/..")])
def test_path_like_step_on_the_command_line_is_exit_2(project, tmp_path, capsys, flag, value):
    before = snapshot(tmp_path)
    code, text = pipeline_here(capsys, "run", project / "wf.yaml", flag, value, "--output", tmp_path / "out")
    assert_refused(code, text, f"{flag} {value}: no such step")
    assert snapshot(tmp_path) == before


def test_path_like_workflow_name_is_exit_2(project, tmp_path, capsys):
    write(project, FAKE_WORKFLOW.replace("name: fake", 'name: "../../escape"'))
    before = snapshot(tmp_path)
    code, text = pipeline_here(capsys, "run", project / "wf.yaml")
    assert_refused(code, text, "wf.yaml:2:7: name:")
    assert snapshot(tmp_path) == before


BAD_OUTPUT_NAMES = {'"."': "plain folder name", '".."': "plain folder name", "logs": "is taken",
                    "run.json": "is taken", "Report.md": "is taken", "reports": "is taken", '"a/b"': "plain folder name",
                    '"../../x"': "plain folder name", '".hidden"': "plain folder name", '""': "plain folder name",
                    '"a\\\\b"': "plain folder name", '"-rf"': "plain folder name", '"a\\0b"': "plain folder name"}


@pytest.mark.parametrize("name", list(BAD_OUTPUT_NAMES))
def test_bad_output_name_is_exit_2_at_its_line_and_deletes_nothing(project, tmp_path, capsys, monkeypatch, name):
    monkeypatch.setenv("FAKE_COUNTER", str(tmp_path / "counter.txt"))
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "run.log").write_text("an earlier run's log\n")
    (out / "notes.txt").write_text("the user's own file\n")
    write(project, FAKE_WORKFLOW.replace("  joined: j", f"  {name}: j"))
    before = snapshot(tmp_path)
    code, text = pipeline_here(capsys, "run", project / "wf.yaml", "--output", out)
    assert_refused(code, text, "wf.yaml:11:", BAD_OUTPUT_NAMES[name])
    assert snapshot(tmp_path) == before  # nothing ran (no counter file) and nothing was touched


# --- --output and the cache folder ------------------------------------------------------------------------

def _file(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("precious")
    return tmp_path / "a-file"


BAD_FOLDERS = {
    "--output is a file": (lambda t: ["--output", _file(t)], "--output", "this is a file, not a folder"),
    "--output under a file": (lambda t: ["--output", _file(t) / "sub"], "--output", "a part of this path is a file"),
    "--output in a symlink loop": (lambda t: ["--output", _loop(t / "loop") / "out"], "--output", "cannot create"),
    "--cache-dir is a file": (lambda t: ["--cache-dir", _file(t), "--output", t / "out"], "--cache-dir",
                              "this is a file, not a folder"),
    "--cache-dir under a file": (lambda t: ["--cache-dir", _file(t) / "c", "--output", t / "out"], "--cache-dir",
                                 "is a file, so the cache folder cannot be created"),
}


@pytest.mark.parametrize("case", list(BAD_FOLDERS))
def test_bad_output_or_cache_folder_is_exit_2(project, tmp_path, capsys, case):
    make, flag, expected = BAD_FOLDERS[case]
    args = make(tmp_path)
    before = snapshot(tmp_path)
    code, text = pipeline_here(capsys, "run", project / "wf.yaml", *args)
    assert_refused(code, text, flag, expected)
    assert snapshot(tmp_path) == before


def test_cache_dir_from_the_environment_naming_a_file_is_exit_2(project, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(_file(tmp_path)))
    before = snapshot(tmp_path)
    for command in ("run", "plan"):
        code, text = pipeline_here(capsys, command, project / "wf.yaml", *(["--output", tmp_path / "out"] * (command == "run")))
        assert_refused(code, text, "PIPELINE_CACHE_DIR", "this is a file, not a folder")
    assert snapshot(tmp_path) == before


def _mount_tmpfs(folder: Path, options: str) -> bool:
    """Mount a tmpfs on `folder` (as root in a container that allows it); False when not permitted."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


def _umount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], capture_output=True)


def test_read_only_output_and_cache_are_exit_2(project, tmp_path, capsys):
    ro = tmp_path / "ro"
    if not _mount_tmpfs(ro, "ro,size=64k"):
        if os.geteuid() == 0:
            pytest.skip("no read-only place: root ignores permissions and mount is not permitted")
        ro.mkdir()
        ro.chmod(0o555)
    try:
        for args, expected in ((["--output", ro / "out"], "--output"), (["--output", ro], "--output"),
                               (["--cache-dir", ro / "cache", "--output", tmp_path / "out"], "--cache-dir")):
            before = snapshot(tmp_path)
            code, text = pipeline_here(capsys, "run", project / "wf.yaml", *args)
            assert_refused(code, text, expected)
            assert "read-only" in text or "not writable" in text, text
            assert snapshot(tmp_path) == before
    finally:
        _umount(ro)


# --- a full disk --------------------------------------------------------------------------------------------

def test_full_disk_while_writing_outputs_fails_cleanly_on_a_small_tmpfs(project, tmp_path):
    out = tmp_path / "small"
    if not _mount_tmpfs(out, "size=256k"):
        pytest.skip("mounting a tmpfs is not permitted here (the simulated ENOSPC test covers it)")
    try:
        code, text = pipeline("run", project / "wf.yaml", "--output", out, cwd=project)
        assert code == 0, text
        (out / "notes.txt").write_text("the user's own file\n")
        first = snapshot(out / "joined")
        (project / "in.txt").write_text("x" * 200_000)  # joined is now ~600 KB: more than the disk holds
        code, text = pipeline("run", project / "wf.yaml", "--output", out, cwd=project)
        assert_refused(code, text, "cannot write the run's outputs", "No space left", exit_code=1)
        assert snapshot(out / "joined") == first  # the previous output is whole, not half replaced
        assert (out / "notes.txt").read_text() == "the user's own file\n"
        assert not [p for p in out.iterdir() if p.name.startswith(".staging")]
    finally:
        _umount(out)


def test_simulated_enospc_while_copying_outputs_replaces_nothing(project, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert pipeline_here(capsys, "run", project / "wf.yaml", "--output", out)[0] == 0
    (out / "notes.txt").write_text("the user's own file\n")
    before = snapshot(out)
    real = shutil.copytree

    def full(src, dst, *args, **kwargs):
        real(src, dst, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(shutil, "copytree", full)
    (project / "in.txt").write_text("changed")
    code, text = pipeline_here(capsys, "run", project / "wf.yaml", "--output", out)
    assert_refused(code, text, "cannot write the run's outputs", "free some disk space", exit_code=1)
    after = snapshot(out)
    assert {k: v for k, v in after.items() if not k.startswith(("logs", "run.json", "report.md"))} == \
        {k: v for k, v in before.items() if not k.startswith(("logs", "run.json", "report.md"))}


def test_export_reports_a_full_disk_not_another_opset():
    from passes.onnx.export import _disk_full

    wrapped = RuntimeError("serialization failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert _disk_full(wrapped) and not _disk_full(RuntimeError("unsupported operator"))


# --- outputs are the tool's names only --------------------------------------------------------------------

def test_outputs_replace_only_their_own_names(project, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "keep.txt").write_text("the user's")
    assert pipeline_here(capsys, "run", project / "wf.yaml", "--output", out)[0] == 0
    (project / "in.txt").write_text("again")
    assert pipeline_here(capsys, "run", project / "wf.yaml", "--output", out)[0] == 0
    assert (out / "joined" / "text.txt").read_text().startswith("again")
    assert (out / "mine" / "keep.txt").read_text() == "the user's"
    assert sorted(p.name for p in out.iterdir()) == ["joined", "logs", "mine", "report.md", "run.json"]


# --- smaller ones -----------------------------------------------------------------------------------------

def test_set_of_an_unknown_step_blames_the_set(project, capsys):
    code, text = pipeline_here(capsys, "validate", project / "wf.yaml", "--set", "steps.nope.x=1")
    assert_refused(code, text, "--set steps.nope.x=1: steps.nope: missing `type`")
    assert "wf.yaml:" not in text


def test_plan_says_may_run_behind_a_rebuilt_input(project, tmp_path, capsys):
    import json

    code, text = pipeline_here(capsys, "plan", project / "wf.yaml", "--json")
    rows = {r["name"]: r for r in json.loads(text)}
    assert rows["src"]["status"] == "will run"
    assert rows["a"]["status"] == "may run" and rows["a"]["reason"] == "input will be rebuilt (src)"


def test_header_only_csv_says_no_rows(tmp_path, make_ctx):
    from passes.base import PassError
    from passes.sources.data import LoadData
    from schemas.steps import LoadDataConfig

    (tmp_path / "empty.csv").write_text("label,text\n")
    config = LoadDataConfig.model_validate({"type": "load_data", "path": "empty.csv", "text": "text", "label": "label"})
    with pytest.raises(PassError, match=r"no rows in empty\.csv"):
        LoadData(config).run({}, make_ctx("sms"))
