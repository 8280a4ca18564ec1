"""The `evaluate` pass: quality, latency and size of several classifiers side by side.

Causal LMs (the metrics perplexity, generate, tokens_per_second, time_to_first_token) are measured
by `passes.evaluate.lm`.

Hugging Face models run in PyTorch (eager, fp32, `inference_mode`), ONNX models in ONNX Runtime on the
workflow target's providers. Quality comes from sklearn.metrics on a dataset split; latency from one
process in which every model is timed on identical inputs, interleaved in shuffled blocks (see
`passes.evaluate.latency`); size from the model files on disk. The first model is the baseline the others are
compared with. Output: `metrics.json`, `report.md`, `report.html` and PNG charts (see `passes.evaluate.report`).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from schemas import Target
from schemas.steps import EvaluateConfig
from schemas.steps.evaluate import LM_METRICS

from passes.evaluate import latency
from passes.evaluate import machine
from passes.evaluate import report
from passes.evaluate.classifiers import Classifier, HfClassifier, OnnxClassifier, check_classifier, execution_record, quality_metrics
from passes.evaluate.goals import apply_goals, with_goals
from passes.ort import files, providers
from passes.base import Artifact, MemoryUse, Pass, PassError
from passes.registry import register_pass

#: Weights files of a Hugging Face folder (the tokenizer and config do not count towards its size).
HF_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "tf_model*.h5", "flax_model*.msgpack")
#: Rows per batch for the quality metrics (dynamic padding keeps short batches cheap).
EVAL_BATCH = 32
#: Seed of the block shuffling: a rerun interleaves the models in the same order.
SHUFFLE_SEED = 0
#: Distinct batches the deployment-style latency cycles through (at batch 1: the split's first 200 texts).
LATENCY_BATCHES = 200


def artifact_size_bytes(artifact: Artifact) -> int:
    """Bytes on disk of a model artifact's weights: the ONNX graph and its external data, or HF weights files.

    The tokenizer and config files do not count. For an ONNX folder this is `passes.ort.files.model_size_bytes`.
    """
    folder = Path(artifact.path)
    if artifact.kind == "onnx_model":
        if (folder / files.MODEL_FILE).exists():
            return files.model_size_bytes(folder)
        found: list[Path] = []
    else:
        found = [p for pattern in HF_WEIGHT_PATTERNS for p in folder.glob(pattern)]
    if not found:
        raise PassError(f"model {artifact.step!r}: no model files found in {folder}")
    return sum(p.stat().st_size for p in set(found))


def _token_count(clf: Classifier, text: Any, limit: int) -> int:
    """Tokens of one text (or text pair) as the model sees it, truncated at `limit`: the batches' sort key."""
    return int(clf.encode([text], truncation=True, max_length=limit)["input_ids"].shape[1])


@register_pass
class Evaluate(Pass[EvaluateConfig]):
    """Evaluate classifiers on a dataset split: quality (sklearn), interleaved latency, size; write a report."""

    config_class = EvaluateConfig
    # 3: latency times the split's texts as deployed (padding: longest) by default; 4: genai folders run with
    # `threads` when set, else their own count capped at the machine's CPUs, and say so in `runtime`/`threads`
    version = 4
    #: Not measured: every model loaded at once (a PyTorch model at its size, an onnxruntime session at about
    #: twice its file), beside torch, transformers, onnxruntime, scikit-learn and matplotlib (about 600 MB).
    memory = MemoryUse(factor=3.0, base_mb=600)
    packages = ("torch", "transformers", "tokenizers", "onnxruntime", "onnx", "scikit-learn", "datasets", "numpy",
                "matplotlib", "onnxruntime-genai", "optimum-onnx")

    def run(self, inputs: dict[str, Any], ctx: Any) -> dict[str, Any]:
        """Load every model, predict the split, time all models together, measure sizes, write the report."""
        import torch

        cfg: EvaluateConfig = self.config
        models: list[Artifact] = list(inputs["models"])
        data: Artifact = inputs["data"]
        names = [m.step for m in models]
        if len(set(names)) != len(names):
            raise PassError(f"`models` lists a step twice ({names}); list each model once")
        if any(m in LM_METRICS for m in cfg.metrics):
            return self._run_lms(models, data, ctx)
        rows, data_labels = self._load_split(data)
        texts = [(r["text"], r["text_pair"]) if "text_pair" in r else r["text"] for r in rows]
        y_true = [int(r["label"]) for r in rows]
        threads = cfg.threads or ctx.target.threads or os.cpu_count() or 1
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)  # restored below: the runner may run other steps in this process
        try:
            classifiers = self._load_models(models, data, data_labels, ctx, threads)
            results: dict[str, dict[str, Any]] = {
                name: {"kind": clf.artifact.kind, "provider": clf.provider} for name, clf in classifiers.items()
            }
            timings = None
            if "latency" in cfg.metrics:
                # Timed before the quality pass: right after a burst of work on every core, the second core
                # stopped helping multi-threaded runs here for 10-30 s (passes/machine.py).
                timings = self._time(classifiers, texts, ctx, results, threads)
            quality = [m for m in cfg.metrics if m in ("accuracy", "f1", "precision", "recall", "confusion_matrix")]
            if quality:
                for name, clf in classifiers.items():
                    y_pred = self._predict(clf, texts, ctx)
                    results[name].update(quality_metrics(y_true, y_pred, len(data_labels), quality))
            if "size" in cfg.metrics:
                for art in models:
                    results[art.step]["size_mb"] = artifact_size_bytes(art) / 1e6
        finally:
            torch.set_num_threads(previous_threads)

        baseline = names[0]
        report.add_comparisons(results, baseline)
        goals, goal_meta = apply_goals(cfg, results, ctx.log)
        environment = self._environment(threads, ctx.target)
        payload = {
            "models": results, "baseline": baseline, "labels": data_labels,
            "config": cfg.model_dump(mode="json"), "environment": environment, "goals": goals,
        }
        if timings is not None:
            payload["latency"] = {"schedule": timings.schedule, "samples_ms": timings.samples_ms}
        (ctx.out_dir / "metrics.json").write_text(json.dumps(payload, indent=2) + "\n")
        report.write_report(ctx.out_dir, payload, step=ctx.step)
        summary = with_goals(report.summary_line(results, baseline), goals)
        ctx.log(summary)
        return {"metrics": results, "baseline": baseline, "summary": summary, **goal_meta,
                "execution": execution_record(classifiers, ctx.target, threads)}

    def _run_lms(self, models: list[Artifact], data: Artifact, ctx: Any) -> dict[str, Any]:
        """Causal LMs: perplexity, sample answers, decode speed, size (see `passes.evaluate.lm`)."""
        import torch

        from passes.evaluate.lm import evaluate_lms

        threads = self.config.threads or ctx.target.threads or os.cpu_count() or 1
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return evaluate_lms(self.config, models, data, ctx, threads, artifact_size_bytes,
                                self._environment(threads, ctx.target))
        finally:
            torch.set_num_threads(previous_threads)

    def _load_split(self, data: Artifact) -> tuple[list[dict[str, Any]], list[str]]:
        from datasets import load_from_disk

        if data.meta.get("format", "classification") != "classification":
            raise PassError(f"dataset {data.step!r} is {data.meta.get('format')!r} data; evaluate needs a classification dataset (text, label)")
        dd = load_from_disk(str(Path(data.path) / "data"))
        if self.config.split not in dd:
            raise PassError(f"dataset {data.step!r} has no split {self.config.split!r} (it has {', '.join(dd)}); set `split`")
        ds = dd[self.config.split]
        if len(ds) == 0:
            raise PassError(f"split {self.config.split!r} of {data.step!r} is empty; give it rows in load_data `splits`")
        if self.config.max_samples is not None:
            ds = ds.select(range(min(self.config.max_samples, len(ds))))
        labels = data.meta.get("labels") or getattr(ds.features.get("label"), "names", None)
        if not labels:
            raise PassError(f"dataset {data.step!r} has no label names; load it with load_data (which records them)")
        missing = [c for c in ("text", "label") if c not in ds.column_names]
        if missing:
            raise PassError(f"dataset {data.step!r} has no column(s) {missing} (it has {ds.column_names}); load it with load_data `text`/`label`")
        columns = [c for c in ("text", "text_pair", "label") if c in ds.column_names]
        return list(ds.select_columns(columns)), list(labels)

    def _load_models(self, models: list[Artifact], data: Artifact, data_labels: list[str], ctx: Any, threads: int) -> dict[str, Classifier]:
        out: dict[str, Classifier] = {}
        choice = device = None
        for art in models:
            labels = check_classifier(art, data, data_labels)
            if art.kind == "onnx_model":
                choice = choice or providers.choose(ctx.target, ctx.workflow_dir, ctx.log)
                out[art.step] = OnnxClassifier(art, labels, ctx.target, choice, threads)
            else:
                device = device or self._torch_device(ctx)
                out[art.step] = HfClassifier(art, labels, device)
            if len(out[art.step].labels) != out[art.step].logits(out[art.step].encode(["probe"])).shape[-1]:
                raise PassError(f"model {art.step!r}: its output size does not match its {len(labels)} labels; re-export it")
        return out

    @staticmethod
    def _torch_device(ctx: Any) -> str:
        import torch

        if ctx.target.device != "gpu":
            return "cpu"
        if torch.cuda.is_available():
            return "cuda"
        if ctx.target.fallback != "cpu":
            raise PassError("target device gpu but this torch build sees no CUDA device; install a CUDA build of torch or set `target.fallback: cpu`")
        ctx.log("no CUDA device for PyTorch; PyTorch models run on the CPU")
        return "cpu"

    def _predict(self, clf: Classifier, texts: list[Any], ctx: Any) -> list[int]:
        # Sorted by length so each batch pads to similar lengths; predictions go back to row order.
        order = sorted(range(len(texts)), key=lambda i: len(str(texts[i])))
        preds = [0] * len(texts)
        batches = [order[i : i + EVAL_BATCH] for i in range(0, len(order), EVAL_BATCH)]
        with ctx.progress(len(batches), f"{clf.artifact.step}: predicting") as bar:
            for idx in batches:
                enc = clf.encode([texts[i] for i in idx], padding=True, truncation=True, max_length=self.config.max_length)
                for i, p in zip(idx, clf.logits(enc).argmax(-1).tolist()):
                    preds[i] = int(p)
                bar.advance(1)
        return preds

    def _time(self, classifiers: dict[str, Classifier], texts: list[Any], ctx: Any, results: dict[str, dict[str, Any]], threads: int) -> latency.Timings:
        cfg = self.config
        runners: dict[str, Any] = {}
        tokens: dict[str, float] = {}  # per model: models with different tokenizers see different token counts
        for name, clf in classifiers.items():
            if clf.max_positions and cfg.sequence_length > clf.max_positions:
                raise PassError(f"`sequence_length` {cfg.sequence_length} exceeds model {name!r}'s {clf.max_positions} positions; lower it")
        if cfg.padding == "max_length":
            batch = latency.latency_texts(texts, cfg.batch_size)
            for name, clf in classifiers.items():
                enc = clf.encode(batch, padding="max_length", truncation=True, max_length=cfg.sequence_length)
                runners[name] = clf.bind(enc)
            shape = f"{cfg.sequence_length} tokens (padded)"
        else:
            # As deployed: every model gets the same batches of real texts, each padded to its longest only.
            first = next(iter(classifiers.values()))
            count = min(LATENCY_BATCHES, cfg.repeats)
            batches = latency.deployment_batches(texts, cfg.batch_size, count, lambda t: _token_count(first, t, cfg.sequence_length))
            for name, clf in classifiers.items():
                encoded = [clf.encode(b, padding="longest", truncation=True, max_length=cfg.sequence_length) for b in batches]
                runners[name] = latency.cycling([clf.bind(enc) for enc in encoded])
                tokens[name] = sum(int(enc["input_ids"].shape[1]) for enc in encoded) / len(encoded)
            shape = "the split's texts unpadded" if cfg.batch_size == 1 else "the split's texts in length-sorted batches padded to their longest"
            shape += f" ({tokens[next(iter(classifiers))]:.1f} tokens on average, at most {cfg.sequence_length})"
        total = cfg.repeats * len(runners)
        load_before = latency.load_average()
        # Timing starts once the cores work in parallel again (after loading, or a previous step's burst).
        parallel = machine.settle(threads, ctx.target.device, ctx.log)
        ctx.log(f"timing {len(runners)} model(s): batch {cfg.batch_size}, {shape}, {threads} thread(s), {cfg.warmup} warmup + {cfg.repeats} runs each in {cfg.blocks} interleaved blocks")
        with ctx.progress(total, "latency") as bar:
            timings = latency.time_interleaved(runners, warmup=cfg.warmup, repeats=cfg.repeats, blocks=cfg.blocks, seed=SHUFFLE_SEED, progress=bar)
        load = max(load_before, latency.load_average())
        if load > (os.cpu_count() or 1):
            # Oversubscribed cores hurt PyTorch's OpenMP threads far more than ONNX Runtime's pool.
            ctx.log(f"the machine was busy while timing (load average {load:.1f} on {os.cpu_count()} cores): latencies and speedups are unreliable; rerun on a quiet machine")
        for name, samples in timings.samples_ms.items():
            results[name].update(latency.summarize(samples, cfg.batch_size))
            results[name]["load_average"] = round(load, 2)
            results[name].update(parallel)
            results[name]["latency_provider"] = classifiers[name].provider  # what the timed session really ran on
            if classifiers[name].settings:
                results[name]["session_options"] = classifiers[name].settings  # tuned by a tune_session step
            results[name].update(threads=threads, batch_size=cfg.batch_size, sequence_length=cfg.sequence_length,
                                 padding=cfg.padding, tokens_mean=round(tokens.get(name, cfg.sequence_length), 2))
        return timings

    @staticmethod
    def _environment(threads: int, target: Target) -> dict[str, Any]:
        from passes.ort.isa import cpu_info

        import onnxruntime
        import torch
        import transformers

        info = cpu_info()
        return {
            "threads": threads, "cpu_count": os.cpu_count(), "cpu": info.model, "isa": info.isa,
            "cpu_flags": list(info.flags), "platform": platform.platform(),
            "python": platform.python_version(), "target": target.model_dump(mode="json"),
            "providers": {"requested": target.resolved_providers(), "available": onnxruntime.get_available_providers()},
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
        }
