"""`optimize_onnx`: onnxruntime's transformer fusions, offline graph optimization and fp16, for the target.

Three stages, each optional, in this order:
1. The transformer optimizer's fusions (`onnxruntime.transformers.optimizer.optimize_model` with
   `opt_level=0`), for the model type read from config.json (BERT-family encoders -> `bert`, gpt2, ...):
   one `Attention` per layer, `EmbedLayerNormalization`, `BiasGelu`, ... SkipLayerNormalization is left
   unfused on cpu targets: it ran slower than Add + LayerNormalization in this onnxruntime on x86.
2. onnxruntime's offline graph optimization at `level` (a session that writes its optimized graph,
   on the target's providers). `basic` keeps standard operators, so `quantize` can follow; extended
   and all write provider-specific kernels.
3. float16 (gpu targets by default) with onnxruntime's converter: inputs and outputs keep their types,
   and the operators in onnxruntime's block list (plus `fp16_op_block_list`) stay float32.

The output has the layout `export_onnx` writes. The new graph is run next to the input on sample
sentences on the CPU provider: it must load and run, and float32 results must agree within `atol`.
Measured on the quickstart's MiniLM (2 threads, batch 1, 64 tokens): see benchmarks/optimize_then_quantize.py.
"""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from schemas.steps import OptimizeOnnxConfig

from passes.ort import files
from passes.ort import fusion
from passes.ort import isa
from passes.ort import providers
from passes.ort.checks import compare_outputs
from passes.ort.sessions import target_session
from passes.base import Artifact, MemoryUse, Pass, PassError, StepContext
from passes.hf.folders import read_config
from passes.registry import register_pass


@register_pass
class OptimizeOnnx(Pass[OptimizeOnnxConfig]):
    """Fuse, graph-optimize and (for GPUs) convert an `onnx_model` to float16; the output is an `onnx_model`.

    meta: task, labels, inputs, outputs, opset (from the input), model_type, fused (fused operator
    counts), nodes_before, nodes_after, level, fp16, size_mb, max_abs_diff_vs_input, choices (what the
    target decided and why), execution (the providers of the optimizing session).
    """

    config_class = OptimizeOnnxConfig
    version = 2  # 2: a classifier's last layer runs its tail on the first token only (fusion.prune_to_first_token)
    packages = ("onnxruntime", "onnx", "transformers", "tokenizers", "numpy")
    #: Not measured: as quantize's (which loads the same model into onnxruntime and writes a copy).
    memory = MemoryUse(factor=6.5, base_mb=400)

    def run(self, inputs: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        cfg = self.config
        source: Artifact = inputs["model"]
        src_model = files.model_file(source, "optimize_onnx takes an export_onnx step")
        target = ctx.target
        config = read_config(source.path)
        model_type = self._model_type(config, ctx)
        built_for = isa.resolve(target.isa)
        if cfg.skip_layer_norm is not None:
            skip_layer_norm = cfg.skip_layer_norm
        else:
            skip_layer_norm = target.device != "cpu" or isa.fuse_skip_layer_norm(built_for)
        fp16 = cfg.fp16 if cfg.fp16 is not None else target.device == "gpu"
        decided = []  # what the target decided (fields the step left unset)
        if cfg.skip_layer_norm is None:
            decided.append(f"SkipLayerNorm fused ({built_for})" if skip_layer_norm
                           else f"SkipLayerNorm unfused (slower on x86 CPUs; building for {built_for})")
        if cfg.fp16 is None:
            decided.append("float16 (GPU)" if fp16 else "float32")
        choices = {"model_type": model_type, "skip_layer_norm": skip_layer_norm, "fp16": fp16, "level": cfg.level,
                   "isa": built_for if target.device == "cpu" else None,
                   "reason": f"{target.device} target: {', '.join(decided) or 'as set in the step'}"}
        ctx.log(f"optimizing: fusions {model_type or 'none'}, level {cfg.level}, {'fp16' if fp16 else 'fp32'} ({choices['reason']})")
        nodes_before = sum(files.op_counts(src_model).values())
        scratch = ctx.out_dir / ".stages"
        scratch.mkdir()
        try:
            graph, fused = src_model, {}
            if model_type:
                graph, fused = self._fuse(src_model, model_type, config, skip_layer_norm, fp16, scratch / "fused", ctx)
            execution = None
            if cfg.level != "none":
                graph, execution = self._graph_optimize(graph, skip_layer_norm, scratch / "level", ctx)
            if fp16:
                self._to_fp16(graph, ctx.out_dir)
            else:
                _place(graph, ctx.out_dir, move=graph != src_model)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        files.copy_companions(source.path, ctx.out_dir)

        dst_model = ctx.out_dir / files.MODEL_FILE
        check = compare_outputs(source.path, src_model, dst_model, source.meta.get("outputs"), "the optimized model")
        if not fp16 and not check["max_abs_diff"] <= cfg.atol:
            raise PassError(f"the optimized graph's outputs differ from the input's by {check['max_abs_diff']:.3g} "
                            f"(atol {cfg.atol}): try `level: basic`, or turn fusions off one by one with `fusion_options`")
        nodes_after = sum(files.op_counts(dst_model).values())
        size = files.model_size_bytes(ctx.out_dir)
        fused_text = ", ".join(f"{n} {op}" for op, n in fused.items()) or "no fusions"
        agree = f", same label on {check['same_label']} samples" if check["same_label"] else ""
        return {
            "task": source.meta.get("task"), "labels": source.meta.get("labels"), "inputs": source.meta.get("inputs"),
            "outputs": source.meta.get("outputs"), "opset": source.meta.get("opset"),
            "model_type": model_type, "fused": fused, "nodes_before": nodes_before, "nodes_after": nodes_after,
            "level": cfg.level, "fp16": fp16, "size_mb": files.mb(size), "max_abs_diff_vs_input": check["max_abs_diff"],
            "same_label_vs_input": check["same_label"], "choices": choices,
            "execution": execution or check["execution"],
            "summary": f"{fused_text}; {nodes_before} -> {nodes_after} nodes (level {cfg.level}"
            f"{', fp16' if fp16 else ''}); {files.mb(size):.1f} MB; max |diff| vs input {check['max_abs_diff']:.3g}{agree}",
            "metrics": {"size_mb": files.mb(size), "nodes": nodes_after, "max_abs_diff_vs_input": check["max_abs_diff"]},
        }

    def _model_type(self, config: dict, ctx: StepContext) -> str | None:
        """The optimizer's model type: the step's, else from config.json; None skips the fusions."""
        from onnxruntime.transformers.optimizer import MODEL_TYPES

        chosen = self.config.model_type
        if chosen == "none":
            return None
        if chosen is not None:
            if chosen not in MODEL_TYPES:
                close = difflib.get_close_matches(chosen, list(MODEL_TYPES), n=1)
                raise PassError(f"model_type {chosen!r} is not one the transformer optimizer knows "
                                f"({', '.join(sorted(MODEL_TYPES))})" + (f"; did you mean {close[0]!r}?" if close else ""))
            return chosen
        found = fusion.optimizer_model_type(SimpleNamespace(**config))
        if found is None:
            ctx.log(f"no transformer fusions for model type {config.get('model_type')!r}: graph optimization only "
                    "(set `model_type` to one the optimizer knows to force them)")
        return found

    def _fuse(self, src: Path, model_type: str, config: dict, skip_layer_norm: bool, use_gpu: bool, out: Path,
              ctx: StepContext) -> tuple[Path, dict[str, int]]:
        cfg = self.config
        try:
            options = fusion.fusion_options(model_type, skip_layer_norm, cfg.fusion_options)
        except ValueError as exc:
            raise PassError(f"fusion_options: {exc}") from None
        settings = dict(config)
        settings.update({k: v for k, v in (("num_attention_heads", cfg.num_heads), ("hidden_size", cfg.hidden_size)) if v})
        fused = fusion.fuse(src, model_type, SimpleNamespace(**settings), options, use_gpu=use_gpu)
        stats = fusion.fused_counts(fused)
        if not stats:
            ctx.log(f"the transformer optimizer ({model_type}) fused nothing in this graph")
        elif stats.get("Attention") and model_type == "bert":
            stats.update(fusion.first_token_tail(fused, ctx.log))
        return fusion.save_fused(fused, out), stats

    def _graph_optimize(self, src: Path, skip_layer_norm: bool, out: Path, ctx: StepContext) -> tuple[Path, dict]:
        """onnxruntime's offline optimization at `level`; basic on the CPU (provider-independent), higher on the target's."""
        from schemas.target import Target

        level = self.config.level
        target = ctx.target if level != "basic" else Target(threads=ctx.target.threads)
        choice = providers.choose(target, ctx.workflow_dir, ctx.log)
        out.mkdir(parents=True)
        dst = out / files.MODEL_FILE
        disabled = None if not skip_layer_norm else []  # None: the CPU default (SkipLayerNormFusion off)
        session = target_session(src, target, choice, level=level, optimized_model_path=dst,
                                 disabled_optimizers=disabled)
        return dst, providers.session_record(session, choice)

    def _to_fp16(self, src: Path, out_dir: Path) -> None:
        import onnx

        proto = onnx.load(str(src))
        files.save_model(files.to_fp16(proto, self.config.fp16_op_block_list, external=files.has_external_data(src.parent)), out_dir)


def _place(graph: Path, out_dir: Path, move: bool) -> None:
    """Move the final stage's model (and its external data) into the output folder; copy the input's."""
    for f in files.model_files(graph.parent):
        (shutil.move if move else shutil.copy2)(str(f), out_dir / f.name)
