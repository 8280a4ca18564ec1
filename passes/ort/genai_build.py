"""onnxruntime-genai (0.14.1) for causal LMs: build a folder genai runs.

API (what the export pass calls; running and measuring the folder is `passes.ort.genai_run`, LoRA adapters
`passes.ort.genai_adapters`):

- `build_genai(model_dir, out_dir, precision, execution_provider, options, threads, log)` -> facts: runs the
  genai model builder in a child process (`python -m onnxruntime_genai.models.builder`; its output streams
  into `log`). A child, not an in-process call: the builder puts its own folder on `sys.path`, prints
  progress bars, and keeps ~2x the model in memory until the process ends. `options` are the builder's
  `--extra_options`, checked against what 0.14.1 reads (`BUILDER_OPTIONS`); `threads` goes into
  genai_config.json (`intra_op_num_threads`: without it genai ran one thread here).
- `check_options`, `check_precision`, `set_threads`: the checks and the thread setting `build_genai` applies.

Perplexity and decode speed in the table below are measured as `passes.ort.genai_run` describes.

Measured (SmolLM2-135M-Instruct, cpu, 2 cores; perplexity on 100 chatterbot pairs, every 9th row, chat
template + short system prompt; greedy 64 tokens, medians of 9 interleaved rounds in 2-5 processes):

| options (int4 unless said)                                   | tokens/s | ppl   | model MB |
| builder defaults, no thread setting (= Olive's ModelBuilder)  | 129      | 19.44 | 200 |
| defaults + 2 threads                                          | 178      | 19.44 | 200 |
| asymmetric + prune_lm_head                                    | 180      | 18.40 | 202 |
| block 16 (+ asym, + int8 lm_head)                             | 122-136  | 17.61 / 16.44 / 15.86 | 217-236 |
| rtn_last / k_quant_last                                       |          | 20.74 / 51.1 | 101 / 103 |
| asym + int8 lm_head + int8 edge layers (0, 1, 28, 29)          | 168      | 16.31 | 219 |
| asym, int8 "sensitive", prune (the first default)             | 172      | 15.45 | 227 |
| asym + every MatMul int8                                      | 147      | 14.63 | 271 |
| fp32                                                          | 52       | 14.52 | 540 |

DEFAULT_INT4_OPTIONS (per CPU instruction set) was chosen later on the recipe's tuned model against Olive's own
export in one evaluate step: see its comment.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from passes.ort.files import import_nbits_quantizer, quiet_quantizer
from passes.ort.genai_tied import save_in_place, share_tied_embedding
from passes.ort.isa import detect_isa
from passes.ort.nbits import drop_default_zero_points, fuse_siblings, stage_symmetric_checkpoint
from passes.base import PassError
from passes.hf.folders import read_config

BUILDER_VERSION = "0.14.1"
#: Precision -> execution providers the 0.14.1 builder says it supports (its own printed list).
SUPPORTED = {"fp32": ("cpu", "cuda"), "fp16": ("cuda", "dml", "NvTensorRtRtx", "webgpu"),
             "bf16": ("cuda", "NvTensorRtRtx"), "int4": ("cpu", "cuda", "dml", "webgpu")}
#: Builder extra options of 0.14.1 a caller may pass: name -> kind (bool, int choices, str choices, list).
BUILDER_OPTIONS: dict[str, Any] = {
    "int4_block_size": (16, 32, 64, 128, 256), "int4_accuracy_level": (0, 1, 2, 3, 4),
    "int4_is_symmetric": bool, "int4_op_types_to_quantize": list, "int4_nodes_to_exclude": list,
    "int4_algo_config": ("default", "rtn", "rtn_last", "k_quant", "k_quant_mixed", "k_quant_last", "k_quant_linear"),
    "shared_embeddings": bool, "prune_lm_head": bool, "disable_qkv_fusion": bool, "include_hidden_states": bool,
    "qmoe_block_size": (16, 32, 64, 128, 256), "use_8bits_moe": bool, "use_qdq": bool, "enable_cuda_graph": bool,
    "enable_webgpu_graph": bool, "use_webgpu_fp32": bool, "use_cuda_bf16": bool, "num_hidden_layers": int,
}
#: Options of this module (not the builder's): `int8_nodes` lists MatMul nodes (e.g. "/lm_head/MatMul") kept
#: out of int4 by the builder and then quantized to 8-bit MatMulNBits (onnxruntime's MatMulNBitsQuantizer,
#: bits=8, the build's block size / symmetry / accuracy level): the builder itself only offers fp32 or int4
#: per node, except through whole int4_algo_config presets.
#: The name "sensitive" in `int8_nodes` stands for lm_head plus the QKV and down projections of the first and
#: last eighth of the layers and every third layer between (llama.cpp's k_quant_mixed choice of layers).
OWN_OPTIONS = ("int8_nodes",)
#: Builder options this module sets itself (a folder genai generates text from, offline, no remote code).
MANAGED_OPTIONS = ("adapter_path", "filename", "config_only", "exclude_embeds", "exclude_lm_head", "hf_token",
                   "hf_remote")
#: The first tuned int4 cpu options (Zen 4 with VNNI, SmolLM2-135M, table above; then the recipe's tuned model
#: against Olive 0.13's export in one evaluate step: block 64 + "sensitive" + every layer's QKV in 8 bits, +12%
#: perplexity at 1.45x Olive's tokens/s, 222 MB). Measured again on a Zen 4 (AVX512-VNNI, 2 cores) with the int4
#: embedding (`benchmarks/genai_vs_olive.py`, 3 interleaved steps): 12.27 (+12%), 108 MB, 1.23-1.28x Olive's folder
#: as shipped, 0.89-0.97x Olive's with our threads. There MLAS ran blocks of 64 1.16-1.46x faster than 32 and 8-bit
#: MatMulNBits 1.1-1.6x slower than 4-bit at the same block (`benchmarks/nbits_kernels.py`): block 64 pays for the
#: 8-bit layers, which keep perplexity at +12% (every layer int4 asymmetric block 64: 15.57). Within 8% of fp32 and
#: 1.5x Olive takes calibration: the gptq recipe's `int4_tuned` (asymmetric GPTQ block 64 on VNNI, `config_by_isa`).
_VNNI_INT4_OPTIONS: dict[str, Any] = {"int4_block_size": 64, "int4_is_symmetric": False, "int4_accuracy_level": 4,
                                      "int8_nodes": ["sensitive", "qkv"], "prune_lm_head": True}
#: Per ISA (`passes.ort.isa`), the int4 options `build_genai` uses for int4 on cpu when the caller gives no
#: `int4_*` option. Every ISA also quantizes the embedding (Gather -> GatherBlockQuantized, int4): SmolLM2 ties
#: it to lm_head, and the float copy alone was 113 of the folder's 222 MB. Where lm_head ends up in 8 bits (VNNI's
#: int8_nodes, a GPTQ lm_head) a tied embedding then reads lm_head's table instead (genai_tied).
#: avx2 measured on an AMD EPYC (Zen 3, AVX2, no VNNI), 2 cores, the chat recipe's merged model, test split, one
#: evaluate process, 9 interleaved runs (merged fp32 perplexity 10.91; Olive's ModelBuilder int4: 13.96, 99 tok/s,
#: 200 MB, one thread since it writes no thread setting):
#:   asym block 64 + int8 "sensitive" + "qkv" (the VNNI choice)   12.27  86 tok/s  222 MB  (8-bit layers slow here)
#:   asym block 64, int4 embedding                                 15.57 116 tok/s   95 MB
#:   asym block 32, int4 embedding                                 13.94 113 tok/s  107 MB
#:   sym block 32, int4 embedding                                  13.91 132 tok/s  104 MB  <- avx2 default
#:   sym block 64, int4 embedding                                  16.02           94 MB
#:   sym block 32, int4 embedding, no thread setting                      97 tok/s
#:   asym block 64 at accuracy level 1 (fp32 compute): 39 tok/s against 114 at level 4 (int8), same busy run
#: (Timed again with AVX2 kernels on a Zen 4, benchmarks/ort_avx2.py: blocks of 32/64/128 alike, asymmetric 0.85x,
#: 8-bit 0.60-0.70x, so the same choice; the model with them at 1.00x Olive's folder given our threads.)
#: On AVX2 (no VNNI) symmetric blocks skip the zero-point work in MLAS's int8 kernel: the fastest int4; without an
#: exact int8 dot product the 8-bit layers cost 25% of the speed. Accuracy level 4 everywhere (int8 activations:
#: fp32 compute is 3x slower). Perplexity within 8% of fp32 needs calibrated weights (the GPTQ recipe):
#: the default's error is spread over every kind of layer. Each kind alone put back in 8 bits (symmetric block 128,
#: from the fp32 weights; the rest as the default, 13.91): lm_head 13.24, every QKV 13.33, gate + up 13.03, down
#: 13.07, o 13.96, the embedding 13.97. Olive's GPTQ alone, every layer int4: symmetric block 32 14.46 (its grid
#: clips the positive extreme), asymmetric block 32 13.01, + 8-bit lm_head 12.38; mixed precision + GPTQ + 8-bit
#: QKV: 11.66; Olive's QuaRot (rotations folded into the weights) then symmetric GPTQ block 32, every layer int4
#: (this default's format, speed and size: the gptq recipe's `int4_rotated`): 12.91, and 11.97 once its block
#: scales are tuned by distillation from the fp32 model (`tune_scales`, the recipe's `int4_tuned`). (Those GPTQ
#: figures are from 64 padded rows; on 256 unpadded ones, `passes.olive.data`: 11.36, 12.18 and 11.67, +6.9%.)
#: And MLAS without VNNI runs
#: 8-bit MatMulNBits at about half the int4 rate (one call, 2 threads: 576x1536 55 us against 33, lm_head 576x49152 1.1-1.4 ms against 0.65-0.68); onnxruntime's dynamic int8
#: (per-tensor activations) was slower in the model and less accurate (`_quantize_int8`).
DEFAULT_INT4_OPTIONS: dict[str, dict[str, Any]] = {
    "avx2": {"int4_block_size": 32, "int4_is_symmetric": True, "int4_accuracy_level": 4,
             "int4_op_types_to_quantize": ["MatMul", "Gather"], "prune_lm_head": True},
    "avx512_vnni": {**_VNNI_INT4_OPTIONS, "int4_op_types_to_quantize": ["MatMul", "Gather"]},
}
for _isa, _like in (("avx512", "avx2"), ("x86", "avx2"), ("generic", "avx2"), ("avx2_vnni", "avx512_vnni"),
                    ("arm64", "avx512_vnni")):  # same int8 path (passes.ort.isa): same choice, not measured apart
    DEFAULT_INT4_OPTIONS[_isa] = DEFAULT_INT4_OPTIONS[_like]
#: With LoRA adapters: the first default (block 32, "sensitive" only, float embedding), the one the adapter tests
#: validate (an int4 adapter's effect tracks PEFT's within 1.5x of the int4 base's own error).
ADAPTER_INT4_OPTIONS: dict[str, Any] = {**_VNNI_INT4_OPTIONS, "int4_block_size": 32, "int8_nodes": ["sensitive"]}
#: The files onnxruntime-genai 0.14.1 reads from a folder: its config, the graph and its weights, the tokenizer
#: (tokenizer.json, tokenizer_config.json) and the chat template (chat_template.jinja: without it genai's
#: `apply_chat_template` fails with "Empty chat template"). Adapters add *.onnx_adapter + adapters.json.
RUNTIME_FILES = ("genai_config.json", "model.onnx", "model.onnx.data", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja")
#: What the builder also writes and nothing reads: the same tokens are in tokenizer_config.json.
UNUSED_FILES = ("special_tokens_map.json",)
#: Names `int8_nodes` expands: "sensitive" (lm_head, and the QKV and down projections of a third of the layers,
#: llama.cpp's k_quant_mixed choice) and "qkv" (every layer's attention input projections).
INT8_ALIASES = ("sensitive", "qkv")


# --- building -------------------------------------------------------------------------------------------


def check_options(options: dict[str, Any]) -> list[str]:
    """The builder options as `KEY=VALUE` strings (this module's own options are checked, not passed);
    PassError listing the valid names for unknown ones."""
    args = []
    for key, value in options.items():
        if key in MANAGED_OPTIONS:
            raise PassError(f"genai option {key!r} is set by the export itself and cannot be given")
        kind = list if key in OWN_OPTIONS else BUILDER_OPTIONS.get(key)
        if kind is None:
            raise PassError(f"unknown genai builder option {key!r}; onnxruntime-genai {BUILDER_VERSION} accepts: "
                            + ", ".join(sorted(BUILDER_OPTIONS)) + f" (and this module's {', '.join(OWN_OPTIONS)})")
        if kind is bool:
            if not isinstance(value, bool):
                raise PassError(f"genai option {key!r} takes true or false, not {value!r}")
            text = "true" if value else "false"
        elif kind is int:
            if not isinstance(value, int) or value < 1:
                raise PassError(f"genai option {key!r} takes a positive integer, not {value!r}")
            text = str(value)
        elif kind is list:
            sep = "/" if key == "int4_op_types_to_quantize" else ","  # how the builder splits the list
            items = [value] if isinstance(value, str) else list(value)
            if not items or not all(isinstance(v, str) and v and not re.search(rf"[\s={sep}]", v) for v in items):
                raise PassError(f"genai option {key!r} takes a list of names (without spaces, '=' or {sep!r}), "
                                f"not {value!r}")
            text = sep.join(items)
        else:
            if value not in kind:
                raise PassError(f"genai option {key!r} takes one of {', '.join(map(str, kind))}, not {value!r}")
            text = str(value)
        if key not in OWN_OPTIONS:
            args.append(f"{key}={text}")
    return args


def check_precision(precision: str, execution_provider: str) -> None:
    """PassError before building when the builder cannot make `precision` for `execution_provider`."""
    if precision == "int8":
        raise PassError(f"onnxruntime-genai {BUILDER_VERSION}'s builder has no int8 precision (it makes fp32, fp16, "
                        "bf16 and int4); use int4 with int4_algo_config rtn_last / k_quant_last (int8 lm_head) or "
                        "k_quant_mixed (int8 for sensitive layers)")
    if precision not in SUPPORTED:
        raise PassError(f"unknown precision {precision!r}; the genai builder makes {', '.join(SUPPORTED)}")
    if execution_provider not in SUPPORTED[precision]:
        can = [p for p, eps in SUPPORTED.items() if execution_provider in eps]
        raise PassError(f"the genai builder does not make {precision} models for {execution_provider!r}"
                        + (f"; for {execution_provider} use {' or '.join(can)}" if can else
                           f"; it targets {', '.join(sorted({e for v in SUPPORTED.values() for e in v}))}"))


def build_genai(model_dir: Path, out_dir: Path, precision: str, execution_provider: str, options: dict[str, Any],
                threads: int | None, log: Callable[[str], None], *, adapter_path: Path | None = None,
                tuned: bool = True, isa: str | None = None) -> dict[str, Any]:
    """Run the genai builder on a Hugging Face causal-LM folder into `out_dir`; return facts about the result.

    `isa` (`passes.ort.isa`; default this machine's) picks DEFAULT_INT4_OPTIONS for an int4 cpu build given no
    `int4_*` option.
    `tuned=False` runs the builder with its own defaults only (no DEFAULT_INT4_OPTIONS, no thread setting):
    what Olive's ModelBuilder pass writes, for comparisons.
    """
    check_precision(precision, execution_provider)
    options = dict(options)
    defaults_for = None
    if not tuned:
        threads = None
    elif precision == "int4" and execution_provider == "cpu" and not any(k.startswith("int4_") for k in options):
        isa = isa or detect_isa()
        if isa not in DEFAULT_INT4_OPTIONS:
            raise PassError(f"no int4 defaults for the instruction set {isa!r}; known: {', '.join(DEFAULT_INT4_OPTIONS)}")
        options, defaults_for = {**DEFAULT_INT4_OPTIONS[isa], **options}, isa
    check_options(options)
    requested = options.get("int8_nodes", [])
    requested = [requested] if isinstance(requested, str) else list(requested)
    int8_nodes = _int8_nodes(requested, Path(model_dir))
    if int8_nodes and precision != "int4":
        raise PassError("`int8_nodes` applies to int4 builds (the other nodes are int4); remove it or use int4")
    builder_options = {k: v for k, v in options.items() if k not in OWN_OPTIONS}
    if int8_nodes:
        builder_options["int4_nodes_to_exclude"] = list(builder_options.get("int4_nodes_to_exclude", [])) + int8_nodes
        if "/lm_head/MatMul" in int8_nodes:  # a float lm_head shared with the embedding would not run (notes)
            builder_options.setdefault("shared_embeddings", False)
    extra = check_options(builder_options)
    if adapter_path is not None:
        extra.append(f"adapter_path={adapter_path}")
    extra += ["hf_remote=false", "hf_token=false"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="genai-builder-") as scratch:
        staged = stage_symmetric_checkpoint(Path(model_dir), Path(scratch))
        if staged is not None:
            log("symmetric packed checkpoint: the builder gets its default zero points written out (nbits says why)")
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str((staged or Path(model_dir)).resolve()),
               "-o", str(out_dir.resolve()), "-p", precision, "-e", execution_provider, "-c",
               str(Path(scratch) / "cache"), "--extra_options", *extra]
        log(f"genai builder: {precision} for {execution_provider}, options {options or 'defaults'}")
        _run_builder(cmd, scratch, log)
    if not (out_dir / "genai_config.json").is_file() or not (out_dir / "model.onnx").is_file():
        raise PassError(f"the genai builder ended without writing genai_config.json and model.onnx into {out_dir}")
    if int8_nodes:
        _quantize_int8(out_dir, int8_nodes, [n for n in requested if n not in INT8_ALIASES], builder_options, log)
    # a tied embedding reads the 8-bit lm_head's table instead of its own int4 copy (genai_tied says why)
    tied = share_tied_embedding(out_dir, log) if tuned and precision == "int4" else None
    rewrites = _rewrite_nbits(out_dir, log) if tuned and precision == "int4" else None
    set_threads(out_dir, threads)
    for name in UNUSED_FILES if tuned else ():  # builder_defaults keeps the builder's folder as it is
        (out_dir / name).unlink(missing_ok=True)
    files = {p.name: p.stat().st_size for p in sorted(out_dir.iterdir()) if p.is_file()}
    return {"builder": f"onnxruntime-genai {_version()}", "precision": precision, "execution_provider": execution_provider,
            "options": options, "int4_defaults_for_isa": defaults_for, "tied_embedding": tied,
            "nbits_rewrites": rewrites,
            "intra_op_num_threads": threads, "files": files,
            "model_bytes": sum(s for n, s in files.items() if n.startswith("model.onnx"))}


def _int8_nodes(names: list[str], model_dir: Path) -> list[str]:
    """`int8_nodes` with the aliases (INT8_ALIASES) expanded; packed and unpacked QKV names both (the absent
    layout is skipped later)."""
    if not set(names) & set(INT8_ALIASES):
        return names
    layers = int(read_config(model_dir).get("num_hidden_layers", 0))
    qkv = lambda i: [f"/model/layers.{i}/attn/{p}/MatMul" for p in ("qkv_proj", "q_proj", "k_proj", "v_proj")]
    out = [n for n in names if n not in INT8_ALIASES]
    if "sensitive" in names:
        chosen = [i for i in range(layers) if i < layers / 8 or i >= 7 * layers / 8 or (i - round(layers / 8)) % 3 == 2]
        out.append("/lm_head/MatMul")
        for i in chosen:
            out += qkv(i) + [f"/model/layers.{i}/mlp/down_proj/MatMul"]
    if "qkv" in names:
        for i in range(layers):
            out += qkv(i)
    return list(dict.fromkeys(out))


def _quantize_int8(genai_dir: Path, nodes: list[str], explicit: list[str], options: dict[str, Any],
                   log: Callable[[str], None]) -> None:
    """Quantize the float MatMul `nodes` of model.onnx to 8-bit MatMulNBits in place.

    Not onnxruntime's dynamic int8 (MatMulInteger, weights per channel): measured on the chat recipe's SmolLM2
    it was slower in decode than 8-bit MatMulNBits and, with activations quantized per tensor instead of per
    block, less accurate (int8 lm_head: perplexity 14.24 against 13.91 with the int4 one; int8 down projections
    made the model babble)."""
    import onnx
    MatMulNBitsQuantizer = import_nbits_quantizer().MatMulNBitsQuantizer  # keeps the root logger as it was

    model = onnx.load(str(genai_dir / "model.onnx"))
    names = {n.name for n in model.graph.node if n.op_type == "MatMul"}
    missing = sorted(set(nodes) - names)
    missing = [n for n in missing if n in explicit]  # the aliases name both QKV layouts: skip the absent one
    nodes = [n for n in nodes if n in names]
    if missing:
        raise PassError(f"int8_nodes {', '.join(missing)} are not float MatMul nodes of the built model "
                        f"(MatMul nodes look like {', '.join(sorted(names)[:3])})")
    quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=int(options.get("int4_block_size", 32)),
                                     is_symmetric=bool(options.get("int4_is_symmetric", True)),
                                     accuracy_level=int(options.get("int4_accuracy_level", 4)),
                                     # nodes_to_include does not restrict (any MatMul is quantized): exclude the rest
                                     nodes_to_exclude=sorted(names - set(nodes)), op_types_to_quantize=("MatMul",))
    with quiet_quantizer():  # two INFO lines per node (1,300 for SmolLM2) otherwise
        quantizer.process()
    save_in_place(quantizer.model.model, genai_dir)
    log(f"quantized {len(nodes)} node(s) to 8 bits: {', '.join(nodes[:3])}{' ...' if len(nodes) > 3 else ''}")


def _rewrite_nbits(genai_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The exact MatMulNBits rewrites of `nbits` on the folder's model.onnx (saved once, if anything changed):
    default zero points dropped (a symmetric GPTQ checkpoint keeps them; without them MLAS runs its faster
    kernel), then siblings fused (gate + up: one kernel call instead of two)."""
    import onnx

    model = onnx.load(str(genai_dir / "model.onnx"))
    zero_points = drop_default_zero_points(model)
    fused = fuse_siblings(model)
    if zero_points["nodes"]:
        log(f"dropped the default zero points of {zero_points['nodes']} MatMulNBits node(s) "
            f"({zero_points['freed_bytes'] / 1e6:.1f} MB): the symmetric kernel runs them")
    if fused["groups"]:
        log(f"fused {fused['nodes']} MatMulNBits nodes reading the same input into {fused['groups']} (gate + up)")
    if zero_points["nodes"] or fused["groups"]:
        save_in_place(model, genai_dir)
    return {"default_zero_points_dropped": zero_points["nodes"], "fused_siblings": fused["nodes"]}


def _run_builder(cmd: list[str], cwd: str, log: Callable[[str], None]) -> None:
    tail: deque[str] = deque(maxlen=25)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            errors="replace")
    assert proc.stdout is not None
    for raw in proc.stdout:
        for line in raw.replace("\r", "\n").splitlines():
            line = line.rstrip()
            if not line or "%|" in line or "it/s]" in line:  # progress bars: noise in a log
                continue
            tail.append(line)
            log(f"builder: {line}")
    if proc.wait() != 0:
        raise PassError(f"the genai builder failed (exit {proc.returncode}); its last lines:\n" + "\n".join(tail))


def _version() -> str:
    from importlib.metadata import version

    return version("onnxruntime-genai")


def set_threads(genai_dir: Path, threads: int | None) -> None:
    """Write intra_op_num_threads (and one inter-op thread) into genai_config.json's session options."""
    if not threads:
        return
    path = Path(genai_dir) / "genai_config.json"
    config = json.loads(path.read_text())
    session = config["model"]["decoder"].setdefault("session_options", {})
    session.update(intra_op_num_threads=int(threads), inter_op_num_threads=1)
    path.write_text(json.dumps(config, indent=4) + "\n")
