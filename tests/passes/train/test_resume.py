"""Resumable training: a LoRA step stopped by Ctrl-C saves a checkpoint first, one killed with SIGKILL after a
checkpoint resumes from it on the next run, and both end with the uninterrupted run's weights; checkpoints go
once the step is cached, and `cache gc` removes abandoned ones."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.cache import Cache
from tests.builders import ROOT, make_artifact
from tests.helpers import cli, default_signals, write
from tests.passes.train.slow_steps import ctrl_c_during_step

WORKFLOW = """
version: 1
name: resume
steps:
  base: {{type: model, path: {model}}}
  chat: {{type: load_data, path: chat.jsonl, splits: {{train: 1.0}}}}
  tune:
    type: lora
    model: base
    data: chat
    max_steps: 12
    batch_size: 4
    save_steps: 3
    eval_strategy: "no"
    learning_rate: 1.0e-2
outputs:
  adapter: tune
"""


def _project(folder: Path, model: Path) -> Path:
    folder.mkdir()
    rows = [{"messages": [{"role": "user", "content": f"say {w} {i}"}, {"role": "assistant", "content": w}]}
            for i, w in enumerate(["cash", "home", "lunch", "prize"] * 5)]
    (folder / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return write(folder, WORKFLOW.format(model=model))


def _start(wf: Path, cache: Path, out: Path, slow: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PIPELINE_PLUGINS": "tests.passes.train.slow_steps", "SLOW_TRAINING_STEP_S": str(slow)}
    return subprocess.Popen([sys.executable, "-m", "runner.cli", "run", str(wf), "--cache-dir", str(cache),
                             "--output", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT, preexec_fn=default_signals)


def _wait_for_checkpoint(cache: Path, after: int, proc: subprocess.Popen, timeout: float = 120) -> int:
    """Wait until a complete checkpoint past step `after` exists; its step."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        done = [int(p.parent.name.split("-")[1]) for p in cache.glob("checkpoints/*/checkpoint-*/trainer_state.json")]
        if any(d > after for d in done):
            return max(done)
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint after step {after}: {proc.communicate()}")


def _weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter_model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)


def test_ctrl_c_saves_a_checkpoint_and_the_next_run_resumes_to_the_same_weights(tmp_path, tiny_chat_llama_dir,
                                                                                  one_thread, monkeypatch,
                                                                                  python_sigint):
    from passes.base import SimpleContext
    from passes.sources.data import LoadData
    from passes.train.steps import Lora
    from schemas.steps import LoadDataConfig, LoraConfig

    _project(tmp_path / "proj", tiny_chat_llama_dir)
    (tmp_path / "data").mkdir()
    meta = LoadData(LoadDataConfig(type="load_data", path="chat.jsonl", splits={"train": 1.0})).run(
        {}, SimpleContext("chat", tmp_path / "data", workflow_dir=tmp_path / "proj", quiet=True))
    inputs = {"model": make_artifact("hf_model", tiny_chat_llama_dir, {"task": "causal-lm"}, "base"),
              "data": make_artifact("dataset", tmp_path / "data", meta, "chat")}
    # the loss logged at every step: a logged loss is the mean since the previous log, which a resume restarts
    cfg = LoraConfig(type="lora", model="base", data="chat", max_steps=12, batch_size=4, save_steps=3,
                     eval_strategy="no", learning_rate=1e-2, logging_steps=1)

    def run(name: str, checkpoints: Path) -> SimpleContext:
        ctx = SimpleContext(name, tmp_path / name, checkpoint_dir=checkpoints, quiet=True)
        ctx.out_dir.mkdir(exist_ok=True)
        Lora(cfg).run(inputs, ctx)
        return ctx

    run("ref", tmp_path / "ref-checkpoints")
    with monkeypatch.context() as patch:
        ctrl_c_during_step(patch, 5)  # between the checkpoints of steps 3 and 6
        with pytest.raises(KeyboardInterrupt):
            run("stopped", tmp_path / "checkpoints")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-5"]
    ctx = run("resumed", tmp_path / "checkpoints")
    assert any(line.startswith("resuming from checkpoint at step 5 of 12") for line in ctx.lines), ctx.lines
    assert _same(_weights(tmp_path / "resumed"), _weights(tmp_path / "ref"))
    history = json.loads((tmp_path / "resumed" / "training_log.json").read_text())
    reference = json.loads((tmp_path / "ref" / "training_log.json").read_text())
    loss = lambda h: [(e["step"], e["loss"]) for e in h if "loss" in e]
    assert len(loss(history)) == 12 and loss(history) == loss(reference)  # the same curve, before and after step 5


def test_a_run_killed_during_training_resumes_on_the_next_run(tmp_path, tiny_chat_llama_dir, one_thread):
    wf = _project(tmp_path / "proj", tiny_chat_llama_dir)
    assert cli("run", wf, "--cache-dir", tmp_path / "ref-cache", "--output", tmp_path / "ref") == 0
    cache, out = tmp_path / "cache", tmp_path / "out"
    killed = _start(wf, cache, out, slow=0.3)
    step = _wait_for_checkpoint(cache, 0, killed)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    (folder,) = (cache / "checkpoints").iterdir()
    assert not (cache / "artifacts" / folder.name).exists()  # nothing committed, the checkpoints kept

    assert cli("run", wf, "--cache-dir", cache, "--output", out) == 0  # the next run (in this process: faster)
    log = (out / "logs" / "run.log").read_text()
    found = re.findall(r"resuming from checkpoint at step (\d+) of 12", log)
    assert found and int(found[-1]) >= step, log
    assert _same(_weights(out / "adapter"), _weights(tmp_path / "ref" / "adapter"))
    assert not (cache / "checkpoints" / folder.name).exists()  # the step is cached: its checkpoints are gone


def test_gc_removes_abandoned_checkpoints_only(tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    assert cli("cache", "--cache-dir", cache_dir, "ls") == 0
    cache = Cache(cache_dir)
    cache.claim(create=True)
    old, fresh, committed = (cache.checkpoints / k / "checkpoint-3" for k in ("a" * 64, "b" * 64, "c" * 64))
    for folder in (old, fresh, committed):
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text("{}")
    (cache.artifacts / ("c" * 64)).mkdir(parents=True)  # its step was committed by a run that died before cleaning up
    long_ago = time.time() - 40 * 86400
    os.utime(old / "trainer_state.json", (long_ago, long_ago))
    os.utime(old, (long_ago, long_ago))
    os.utime(old.parent, (long_ago, long_ago))
    found = {s.path.name for s in cache.abandoned_checkpoints(30 * 86400)}
    assert found == {"a" * 64, "c" * 64}
    with cache.lock("a" * 64):  # a run is training that key: left alone
        assert {s.path.name for s in cache.abandoned_checkpoints(30 * 86400)} == {"c" * 64}
    cache.fingerprints.close()
    assert cli("cache", "--cache-dir", cache_dir, "gc", "--older-than", "30d") == 0
    assert "0 abandoned temporary folders, 0 B; 2 abandoned checkpoint folders" in capsys.readouterr().out
    assert sorted(p.name for p in cache.checkpoints.iterdir()) == ["b" * 64]
