"""`export_onnx` for causal LMs: the onnxruntime-genai model builder, or optimum's exporter.

- `export_genai`: the builder (`genai_build.build_genai`) writes a folder `onnxruntime_genai.Model` loads
  (`genai_config.json`, `model.onnx`, tokenizer files) for the precision and execution provider asked
  (defaults from the workflow target), plus `inference.py`, a chat loop that needs onnxruntime-genai
  alone. With `adapters`, the base is built once with LoRA inputs and each adapter becomes
  `<step>.onnx_adapter`. The result is checked by generating from it (`genai_run.smoke_test`).
- `export_optimum`: optimum's `main_export` with `text-generation-with-past` (a decoder with KV cache
  for plain onnxruntime, e.g. optimum's ORTModelForCausalLM), checked against PyTorch's logits.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from schemas.steps import ExportOnnxConfig
from schemas.steps.onnx import GENAI_PROVIDER_FOR_DEVICE
from schemas.workflow import Target

from passes.hf.folders import packed_quantization, refuse_packed_weights
from passes.hf.loading import load_tokenizer
from passes.ort import files
from passes.ort.isa import resolve as resolve_isa
from passes.ort.sessions import cpu_cores
from passes.base import Artifact, PassError, StepContext

#: Prompts the exports are checked on (any causal LM's tokenizer knows English).
CHECK_PROMPTS = ("What is the capital of France?", "Write one sentence about the sea.",
                 "hello")
#: The chat script written next to a genai model.
CHAT_SCRIPT = "chat_genai.py"


def genai_choices(cfg: ExportOnnxConfig, target: Target, log: Any) -> tuple[str, str]:
    """(precision, execution provider) for a genai export: the step's, else the target's defaults."""
    provider = cfg.execution_provider or GENAI_PROVIDER_FOR_DEVICE[target.device]
    precision = cfg.precision or ("fp16" if provider in ("cuda", "dml", "NvTensorRtRtx") else "int4")
    if cfg.execution_provider is None or cfg.precision is None:
        log(f"genai export: precision {precision}, execution provider {provider} "
            f"(chosen for the target device {target.device}; set `precision` / `execution_provider` to choose)")
    return precision, provider


def export_genai(source: Artifact, adapters: list[Artifact], cfg: ExportOnnxConfig, ctx: StepContext) -> dict[str, Any]:
    """Build a genai folder into ctx.out_dir; return the artifact meta."""
    from passes.ort import genai_adapters, genai_build
    from passes.ort import genai_run

    precision, provider = genai_choices(cfg, ctx.target, ctx.log)
    packed = _packed_source(source, precision, bool(adapters), ctx.log)
    threads = ctx.target.threads or cpu_cores()
    for adapter in adapters:
        _check_adapter(adapter, source)
    if cfg.builder_defaults:
        if adapters or cfg.genai_options:
            raise PassError("`builder_defaults: true` runs the builder with its own settings: remove `genai_options` "
                            "and `adapters`, or set builder_defaults to false")
        ctx.log("builder defaults: no tuned int4 options and no thread setting (what Olive's ModelBuilder pass writes)")
        facts = genai_build.build_genai(Path(source.path), ctx.out_dir, precision, provider, {}, None, ctx.log, tuned=False)
    elif adapters:
        facts = genai_adapters.export_adapters(
            Path(source.path), {a.step: Path(a.path) for a in adapters}, ctx.out_dir,
            precision=precision, execution_provider=provider, options=dict(cfg.genai_options),
            threads=threads, log=ctx.log,
        )
    else:
        isa = resolve_isa(ctx.target.isa) if provider == "cpu" else None
        facts = genai_build.build_genai(Path(source.path), ctx.out_dir, precision, provider, dict(cfg.genai_options),
                                        threads, ctx.log, isa=isa)
        if facts.get("int4_defaults_for_isa"):
            ctx.log(f"int4 options for {isa}: {facts['options']} (genai_build.DEFAULT_INT4_OPTIONS says why)")
    shutil.copy(Path(__file__).parent.parent / "templates" / CHAT_SCRIPT, ctx.out_dir / files.INFERENCE_SCRIPT)
    check = genai_run.smoke_test(ctx.out_dir, CHECK_PROMPTS[0], adapter=adapters[0].step if adapters else None)
    ctx.log(f"check: onnxruntime-genai loads the folder and answers {CHECK_PROMPTS[0]!r} with {check!r}")
    size = files.model_size_bytes(ctx.out_dir)
    names = [a.step for a in adapters]
    return {
        "task": "causal-lm",
        "labels": None,
        "format": "genai",
        "exporter": "genai",
        "precision": precision,
        "execution_provider": provider,
        "model_type": source.meta.get("model_type"),
        "adapters": names,
        "builder": facts,
        # the per-ISA choice this export made (None: the step's own options, or not an int4 cpu build)
        "choices": ({"isa": facts["int4_defaults_for_isa"], "int4_options": facts["options"]}
                    if facts.get("int4_defaults_for_isa") else None),
        "prequantized": packed,
        "size_mb": files.mb(size),
        "check_answer": check,
        "summary": f"onnxruntime-genai {precision} for {provider}, {files.mb(size):.1f} MB"
        + (f", adapters {', '.join(names)}" if names else ""),
        "metrics": {"size_mb": files.mb(size)},
    }


def _packed_source(source: Artifact, precision: str, adapters: bool, log: Any) -> dict[str, Any] | None:
    """The source's packed quantization (GPTQ, AWQ, Olive's Gptq/Rtn...), checked against the build asked.

    The builder writes packed layers as MatMulNBits with their own bits and group size (and quantizes the
    float layers left, e.g. an unquantized lm_head, with the int4 options): so a calibrated quantizer's output
    goes through this exporter with our thread setting and int4 options for the rest.
    """
    quant = packed_quantization(Path(source.path))
    if quant is None:
        return None
    if precision != "int4":
        raise PassError(f"{source.step!r} holds packed {quant.get('quant_method')} weights, which the genai builder "
                        f"writes as int4/int8 MatMulNBits only: set `precision: int4` (not {precision})")
    if adapters:
        raise PassError(f"{source.step!r} holds packed quantized weights: LoRA adapters are exported with a float "
                        "base; give `adapters` the unquantized model")
    overrides = quant.get("overrides") or quant.get("dynamic") or {}
    facts = {"quant_method": quant.get("quant_method"), "bits": quant.get("bits"),
             "group_size": quant.get("group_size"), "symmetric": quant.get("sym", quant.get("symmetric")),
             "overrides": len(overrides)}
    log(f"the source holds packed {facts['quant_method']} weights ({facts['bits']} bits, group {facts['group_size']}, "
        f"{len(overrides)} module override(s)): the builder writes them as they are")
    return facts


def _check_adapter(adapter: Artifact, base: Artifact) -> None:
    if adapter.meta.get("task") != "causal-lm":
        raise PassError(f"the adapter {adapter.step!r} is not a causal-lm adapter ({adapter.meta.get('task')!r})")
    want, have = adapter.meta.get("model_type"), base.meta.get("model_type")
    if want and have and want != have:
        raise PassError(f"the adapter {adapter.step!r} was trained on a {want} model, but {base.step!r} is {have}: "
                        "export adapters with the base they were trained on")


def export_optimum(source: Artifact, cfg: ExportOnnxConfig, ctx: StepContext) -> dict[str, Any]:
    """optimum `main_export` (text-generation-with-past) into ctx.out_dir, checked against PyTorch."""
    refuse_packed_weights(Path(source.path), "export_onnx")
    import warnings

    from optimum.exporters.onnx import main_export

    scratch = ctx.out_dir / ".export"
    ctx.log(f"exporting with optimum (text-generation-with-past, opset {cfg.opset})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            main_export(str(source.path), output=str(scratch), task="text-generation-with-past", opset=cfg.opset,
                        device="cpu", do_validation=False, library_name="transformers")
    except Exception as exc:  # optimum raises many types; say which exporter and how to get around it
        shutil.rmtree(scratch, ignore_errors=True)
        raise PassError(f"optimum's export failed: {type(exc).__name__}: {exc}; try `exporter: genai`") from exc
    for item in scratch.iterdir():
        shutil.move(str(item), str(ctx.out_dir / item.name))
    scratch.rmdir()
    diff = _compare_optimum(Path(source.path), ctx.out_dir)
    ctx.log(f"max |onnxruntime - PyTorch| logits = {diff:.3g} on {len(CHECK_PROMPTS)} prompts")
    if not diff <= cfg.atol:
        raise PassError(f"the ONNX model's logits differ from PyTorch's by {diff:.3g}, more than atol={cfg.atol:g}; "
                        "try another `opset`, or raise `atol` if this difference is acceptable")
    size = files.model_size_bytes(ctx.out_dir)
    return {
        "task": "causal-lm",
        "labels": None,
        "format": "optimum",
        "exporter": "optimum",
        "opset": cfg.opset,
        "model_type": source.meta.get("model_type"),
        "max_abs_diff": diff,
        "size_mb": files.mb(size),
        "summary": f"ONNX (optimum, with KV cache) opset {cfg.opset}, {files.mb(size):.1f} MB; "
        f"max |ORT - PyTorch| logits {diff:.2g}",
        "metrics": {"max_abs_diff": diff, "size_mb": files.mb(size)},
    }


def _compare_optimum(source: Path, exported: Path) -> float:
    """Largest |logits| difference between PyTorch and optimum's ORTModelForCausalLM on CHECK_PROMPTS."""
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(source)
    reference = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    ort_model = ORTModelForCausalLM.from_pretrained(exported, use_cache=True, provider="CPUExecutionProvider")
    worst = 0.0
    for prompt in CHECK_PROMPTS:
        enc = tok(prompt, return_tensors="pt", return_token_type_ids=False)
        with torch.no_grad():
            a = reference(**enc).logits
            b = ort_model(**enc).logits
        if a.shape != b.shape or torch.isnan(b).any():
            return float("inf")
        worst = max(worst, float((a - b).abs().max()))
    return worst


__all__ = ["export_genai", "export_optimum", "genai_choices"]
