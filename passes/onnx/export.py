"""`export_onnx`: a Hugging Face encoder or classifier to ONNX, checked against PyTorch.

Causal LMs go to `passes.onnx.export_lm` (the onnxruntime-genai model builder by default, or optimum).

The export is `torch.onnx.export` with the TorchScript exporter (opsets up to 20; the dynamo exporter
takes higher opsets) and eager attention, batch and sequence axes dynamic. Measured on MiniLM-L6
(batch 1, sequence 64): the TorchScript export takes ~2 s against ~7 s for dynamo, and its graph,
quantized to dynamic int8, runs ~4% faster than the dynamo graph; optimum's `main_export` drives the
same exporter and gives the same graph (529 nodes, identical op counts) with more machinery.

The graph keeps standard ONNX operators (portable to every execution provider, and what static QDQ
and int4 quantize best): fusing it with onnxruntime's transformer optimizer made fp32 no faster here
(onnxruntime fuses LayerNorm and Gelu itself at load time). The one place fusion pays, dynamic int8
(QAttention), is handled by `quantize`.

The pass runs onnxruntime and PyTorch on sample sentences of different lengths (one at a time and all
as one padded batch) and fails when their outputs differ by more than `atol`.
"""

from __future__ import annotations

import errno
import shutil
import warnings
from pathlib import Path
from typing import Any

from schemas.steps import ExportOnnxConfig

from passes.hf.loading import load_tokenizer
from passes.ort import files
from passes.ort.checks import sample_sentences
from passes.ort.sessions import make_cpu_session
from passes.base import Artifact, MemoryUse, Pass, PassError, StepContext
from passes.registry import register_pass
from passes.hf.folders import refuse_packed_weights

#: What each supported task exports: the AutoModel class and the graph's output.
TASK_OUTPUTS = {"text-classification": "logits", "feature-extraction": "last_hidden_state"}
#: The highest opset torch's TorchScript exporter writes; above it the dynamo exporter takes over.
TORCHSCRIPT_MAX_OPSET = 20
#: Inputs an encoder may take, in the order the graph declares them.
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
def _wrap(model: Any, output: str, input_names: tuple[str, ...]) -> Any:
    """A torch module taking the inputs positionally and returning one named output tensor."""
    import torch

    class OneOutput(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            extra = {"token_type_ids": token_type_ids} if "token_type_ids" in input_names else {}
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra, return_dict=True)
            return getattr(out, output)

    return OneOutput().eval()


@register_pass
class ExportOnnx(Pass[ExportOnnxConfig]):
    """Export an `hf_model` (text-classification or feature-extraction) to an `onnx_model` folder.

    The folder holds `model.onnx`, the tokenizer files, `config.json` (with id2label) and a standalone
    `inference.py`. meta: task, labels, inputs, outputs, opset, max_abs_diff, size_mb.
    """

    config_class = ExportOnnxConfig
    # 2: genai int4 defaults (block 64, int8 QKV); 3: per-ISA int4 defaults, int4 or tied 8-bit embedding,
    # no special_tokens_map.json; 4: genai int4 gate + up in one MatMulNBits, default zero points dropped,
    # symmetric Olive checkpoints built (passes.ort.nbits); 5: a genai folder's inference.py caps the built-in
    # thread count at the CPUs of the machine it runs on, and takes --threads
    version = 5
    #: Measured (benchmarks/jobs_sweep.py, MiniLM, 92 MB): 972 MB peak: torch, the traced graph, the ONNX model
    #: in memory and the onnxruntime session that checks it against PyTorch.
    memory = MemoryUse(factor=5.5, base_mb=500)
    packages = ("torch", "transformers", "tokenizers", "onnx", "onnxruntime", "onnxruntime-genai", "optimum-onnx")

    def run(self, inputs: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        source: Artifact = inputs["model"]
        task = source.meta.get("task")
        exporter = self.config.exporter
        if task == "causal-lm":
            from passes.onnx import export_lm

            if exporter == "torch":
                raise PassError(f"step {source.step!r} is a causal LM: export it with `exporter: genai` (the "
                                "onnxruntime-genai builder, the default) or `exporter: optimum`; torch exports encoders")
            if exporter == "optimum":
                return export_lm.export_optimum(source, self.config, ctx)
            return export_lm.export_genai(source, list(inputs.get("adapters") or []), self.config, ctx)
        if exporter in ("genai", "optimum") or self.config.adapters:
            raise PassError(f"step {source.step!r} is a {task} model: `exporter: {exporter}` and `adapters` are for "
                            "causal LMs; encoders export with `exporter: torch` (the default)")
        if task not in TASK_OUTPUTS:
            raise PassError(
                f"export_onnx exports text-classification and feature-extraction models, not {task!r} "
                f"(step {source.step!r}); set `task` on the model step"
            )
        output = TASK_OUTPUTS[task]
        model, tokenizer, missing = _load(source.path, task, source.meta.get("labels"))
        if missing:
            ctx.log(f"warning: {source.path} has no weights for {', '.join(sorted(missing)[:4])}"
                    f"{' ...' if len(missing) > 4 else ''}: they are newly initialized (fine-tune the model first?)")
        input_names = _input_names(model, tokenizer)
        samples = sample_sentences(self.config.check_samples, max_words=_max_length(model, tokenizer) // 2)

        ctx.log(f"exporting {type(model).__name__} ({task}) with opset {self.config.opset} "
                f"({exporter_for(self.config.opset)} exporter)")
        scratch = ctx.out_dir / ".export"
        try:
            path = _export(model, tokenizer, input_names, output, scratch, self.config.opset)
            max_diff, worst = _compare(model, tokenizer, input_names, output, samples, path)
            if not max_diff <= self.config.atol:  # `not <=` also catches NaN
                raise PassError(
                    f"the ONNX model's `{output}` differs from PyTorch's by {max_diff:.3g} (on {worst}), more than "
                    f"atol={self.config.atol:g}; try another `opset`, or raise `atol` if this difference is acceptable"
                )
            for file in files.model_files(scratch):
                shutil.move(str(file), str(ctx.out_dir / file.name))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        ctx.log(f"max |onnxruntime - PyTorch| = {max_diff:.3g} on {len(samples)} samples and a padded batch of them")

        tokenizer.save_pretrained(ctx.out_dir)
        model.config.save_pretrained(ctx.out_dir)
        files.write_inference_script(ctx.out_dir)
        if not (ctx.out_dir / "tokenizer.json").exists():
            ctx.log("the tokenizer has no fast version (tokenizer.json): inference.py needs one")

        size = files.model_size_bytes(ctx.out_dir)
        labels = _labels(model, task)
        return {
            "task": task,
            "labels": labels,
            "inputs": list(input_names),
            "outputs": [output],
            "opset": self.config.opset,
            "exporter": exporter_for(self.config.opset),
            "max_abs_diff": max_diff,
            "size_mb": files.mb(size),
            "model_type": model.config.model_type,
            "summary": f"ONNX opset {self.config.opset}, {files.mb(size):.1f} MB, "
            f"inputs {', '.join(input_names)}; max |ORT - PyTorch| {max_diff:.2g} on {len(samples)} samples",
            "metrics": {"max_abs_diff": max_diff, "size_mb": files.mb(size)},
        }


def _load(folder: Path, task: str, labels: list[str] | None) -> tuple[Any, Any, list[str]]:
    """The PyTorch model (fp32, eval, eager attention), its tokenizer and the weights the folder lacked."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    refuse_packed_weights(folder, "export_onnx")
    tokenizer = load_tokenizer(folder)
    cls = AutoModelForSequenceClassification if task == "text-classification" else AutoModel
    torch.manual_seed(0)  # weights the folder lacks (a new head) are then the same on every run
    # Eager attention exports to plain MatMul/Softmax (no runtime Sqrt for the scale), which onnxruntime
    # fuses and quantizes well; SDPA exports ran no faster (measured on MiniLM).
    model, info = cls.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    model.eval()
    missing = list(info.get("missing_keys", []))
    if task == "text-classification" and labels and len(labels) == model.config.num_labels:
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {name: i for i, name in enumerate(labels)}
    return model, tokenizer, missing


def _labels(model: Any, task: str) -> list[str] | None:
    if task != "text-classification":
        return None
    return [model.config.id2label[i] for i in range(model.config.num_labels)]


def _input_names(model: Any, tokenizer: Any) -> tuple[str, ...]:
    """The inputs the graph takes: those both the tokenizer produces and the model's forward accepts."""
    import inspect

    accepted = inspect.signature(model.forward).parameters
    produced = set(tokenizer.model_input_names) | {"input_ids", "attention_mask"}
    names = tuple(n for n in INPUT_NAMES if n in accepted and n in produced)
    if names[:2] != ("input_ids", "attention_mask"):
        raise PassError(f"{type(model).__name__} does not take input_ids and attention_mask; export_onnx cannot export it")
    return names


def _max_length(model: Any, tokenizer: Any) -> int:
    limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [int(n) for n in limits if isinstance(n, int) and 0 < n < 1_000_000]
    return min(limits) if limits else 512


def _encode(tokenizer: Any, texts: list[str], input_names: tuple[str, ...], max_length: int) -> dict[str, Any]:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    if "token_type_ids" in input_names and "token_type_ids" not in enc:
        import torch

        enc["token_type_ids"] = torch.zeros_like(enc["input_ids"])
    return {name: enc[name] for name in input_names}


def exporter_for(opset: int) -> str:
    """The TorchScript exporter up to the highest opset it knows (20), torch.export (dynamo) above."""
    return "torchscript" if opset <= TORCHSCRIPT_MAX_OPSET else "dynamo"


def _export(model: Any, tokenizer: Any, input_names: tuple[str, ...], output: str, out_dir: Path, opset: int) -> Path:
    """torch.onnx.export to `out_dir/model.onnx` (external data only over 2 GB); returns its path."""
    import onnx
    import torch

    wrapper = _wrap(model, output, input_names)
    # Two rows of different lengths: the exporter sees padding and a batch above one.
    example = _encode(tokenizer, sample_sentences(2), input_names, _max_length(model, tokenizer))
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    axes[output] = {0: "batch", 1: "sequence"} if output == "last_hidden_state" else {0: "batch"}
    raw = out_dir / "raw"  # the exporter's own layout (one file per tensor over 2 GB), consolidated below
    raw.mkdir(parents=True, exist_ok=True)
    dynamo = exporter_for(opset) == "dynamo"
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter; the comparison is what counts
            program = torch.onnx.export(
                wrapper, tuple(example[n] for n in input_names), None if dynamo else str(raw / files.MODEL_FILE),
                input_names=list(input_names), output_names=[output], dynamic_axes=axes,
                opset_version=opset, dynamo=dynamo,
            )
            if dynamo:
                program.save(str(raw / files.MODEL_FILE))
        path = files.save_model(onnx.load(str(raw / files.MODEL_FILE)), out_dir)
    except Exception as exc:  # the exporters raise many types; the user needs the reason and a way out
        if _disk_full(exc):  # another opset would not help: say what would
            raise PassError(f"no space left on the disk while writing the ONNX model under {out_dir}; free some "
                            "disk space (or move the cache with --cache-dir) and run again") from exc
        raise PassError(
            f"torch.onnx.export ({'dynamo' if dynamo else 'TorchScript'}) failed with opset {opset}: "
            f"{type(exc).__name__}: {exc}; try another `opset`"
        ) from exc
    finally:
        shutil.rmtree(raw, ignore_errors=True)
    return path


def _disk_full(exc: BaseException | None) -> bool:
    """ENOSPC anywhere in the exception's chain (torch and onnx wrap the OSError in their own errors)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "No space left on device" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _compare(model: Any, tokenizer: Any, input_names: tuple[str, ...], output: str, samples: list[str],
             onnx_path: Path) -> tuple[float, str]:
    """Largest |onnxruntime - PyTorch| over each sample alone and all samples as one padded batch."""
    import numpy as np
    import torch

    session = make_cpu_session(onnx_path)
    max_length = _max_length(model, tokenizer)
    batches = [[s] for s in samples] + ([samples] if len(samples) > 1 else [])
    worst, where = 0.0, "no sample"
    for texts in batches:
        enc = _encode(tokenizer, texts, input_names, max_length)
        with torch.no_grad():
            expected = getattr(model(**enc, return_dict=True), output).numpy()
        (got,) = session.run([output], {k: v.numpy().astype(np.int64) for k, v in enc.items()})
        # A wrong shape or a NaN is as bad as it gets: count it as an infinite difference.
        same = got.shape == expected.shape and not np.isnan(got).any()
        diff = float(np.max(np.abs(got - expected))) if same else float("inf")
        if diff > worst or where == "no sample":
            shape = "x".join(map(str, enc["input_ids"].shape))
            worst, where = diff, f"input of shape {shape}"
    return worst, where
