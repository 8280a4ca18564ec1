"""The `tune_session` pass: onnxruntime session options chosen by timing them, like Olive's `tune-session-params`.

Which thread count, graph optimization level, spinning policy and execution mode run a model fastest
depends on the CPU, the model and the inputs, so they are measured rather than guessed: every combination
of the step's lists gets a session, and all of them are timed in one process, interleaved in shuffled
blocks (passes/evaluate/latency.py), on the dataset's own texts batched as a deployment batches them (length-
sorted, each batch padded to its longest). onnxruntime's defaults for this machine (all cores, level
`all`, spinning, sequential) are always among the candidates, so the choice is never a guess against them.

The output is the input model's folder with `session_options.json` beside model.onnx: the chosen settings
(read by `evaluate` and by the exported inference.py), every candidate's p50/p90 and throughput, and the
CPU they were measured on. The model itself is unchanged (copied).
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

from schemas.steps.tune import TuneSessionConfig

from passes.base import Artifact, MemoryUse, Pass, PassError
from passes.evaluate import latency, machine
from passes.ort import files, providers
from passes.ort.isa import cpu_info, resolve
from passes.ort.sessions import SESSION_OPTIONS_FILE, cpu_cores, encode, session_inputs, target_session
from passes.hf.loading import load_tokenizer
from passes.registry import register_pass

#: The candidate that stands for onnxruntime's defaults (the thread count is filled in with the cores).
DEFAULTS = {"graph_optimization_level": "all", "allow_spinning": True, "execution_mode": "sequential"}


def thread_choices(cores: int) -> list[int]:
    """1, 2, 4, ... below the cores, and the cores: the counts worth trying by default."""
    counts, n = [], 1
    while n < cores:
        counts.append(n)
        n *= 2
    return counts + [cores]


def candidates(cfg: TuneSessionConfig, cores: int) -> list[dict[str, Any]]:
    """Every combination of the step's lists, onnxruntime's defaults first (added when the lists leave them out)."""
    threads = cfg.threads or thread_choices(cores)
    out = [{"intra_op_num_threads": t, "graph_optimization_level": g, "allow_spinning": s, "execution_mode": m}
           for t, g, s, m in itertools.product(threads, cfg.graph_levels, cfg.spinning, cfg.execution_modes)]
    default = {"intra_op_num_threads": cores, **DEFAULTS}
    return [default] + [c for c in out if c != default]


def label(settings: dict[str, Any]) -> str:
    """A candidate's short name, e.g. `2 threads, all, spin, sequential`."""
    n = settings["intra_op_num_threads"]
    return (f"{n} thread{'s' if n != 1 else ''}, {settings['graph_optimization_level']}, "
            f"{'spin' if settings['allow_spinning'] else 'no spin'}, {settings['execution_mode']}")


@register_pass
class TuneSession(Pass[TuneSessionConfig]):
    """Time an `onnx_model` under every candidate session setting; the output is the model with the fastest's.

    meta: task, labels, inputs, outputs, opset (from the input), session_options (the chosen settings),
    tuning (every candidate: settings, p50/p90 ms, samples/s), default_p50_ms, gain (default p50 / chosen p50,
    or the throughput ratio), isa, cpu.
    """

    config_class = TuneSessionConfig
    version = 1
    packages = ("onnxruntime", "tokenizers", "transformers", "datasets", "numpy")
    #: Not measured: one session per candidate (about twice the model each) beside onnxruntime and transformers.
    memory = MemoryUse(factor=2.0 * 8, base_mb=500)

    def run(self, inputs: dict[str, Any], ctx: Any) -> dict[str, Any]:
        cfg = self.config
        source: Artifact = inputs["model"]
        model = files.model_file(source, "tune_session takes an ONNX model step")
        if files.model_family(source.path, source.meta) == "causal_lm":
            raise PassError(f"step {source.step!r} is a causal LM: its runtime (onnxruntime-genai) reads its session options "
                            "from genai_config.json, which export_onnx writes; tune_session times encoder graphs")
        texts = self._texts(inputs["data"])
        cores = ctx.target.threads or cpu_cores()
        choice = providers.choose(ctx.target, ctx.workflow_dir, ctx.log)
        tried = candidates(cfg, cores)
        ctx.log(f"timing {len(tried)} session settings on {source.step} (batch {cfg.batch_size}, {len(texts)} texts of "
                f"split {cfg.split}, {cfg.repeats} calls each in {cfg.blocks} interleaved blocks)")
        tokenizer = load_tokenizer(source.path)
        count = min(latency_batches(len(texts), cfg.batch_size), cfg.repeats)
        batches = latency.deployment_batches(
            texts, cfg.batch_size, count,
            lambda t: len(tokenizer(t, truncation=True, max_length=cfg.max_length)["input_ids"]))
        runners = {}
        for settings in tried:
            session = target_session(model, ctx.target, choice, settings=settings)
            feeds = [encode(tokenizer, session_inputs(session), b, padding="longest", max_length=cfg.max_length)
                     for b in batches]
            runners[label(settings)] = latency.cycling([_call(session, f) for f in feeds])
        # What is fastest depends on what else the machine does: wait for the cores as evaluate does, and say so
        # when other work ran meanwhile (a busy machine favours fewer threads and no spinning).
        state = machine.settle(cores, ctx.target.device, ctx.log)
        load_before = latency.load_average()
        with ctx.progress(cfg.repeats * len(runners), "tuning") as bar:
            timings = latency.time_interleaved(runners, warmup=cfg.warmup, repeats=cfg.repeats, blocks=cfg.blocks, seed=0,
                                               progress=bar)
        load = max(load_before, latency.load_average())
        if load > cores:
            ctx.log(f"the machine was busy while tuning (load average {load:.1f} for {cores} threads): the choice fits a "
                    "loaded machine; tune again when it is quiet (`--force`) for a deployment that has the CPU to itself")
        table = []
        for settings, (name, samples) in zip(tried, timings.samples_ms.items()):
            summary = latency.summarize(samples, cfg.batch_size)
            table.append({**settings, "label": name, "latency_p50_ms": round(summary["latency_p50_ms"], 4),
                          "latency_p90_ms": round(summary["latency_p90_ms"], 4),
                          "throughput_sps": round(summary["throughput_sps"], 2)})
        best = pick(table, cfg.objective)
        default = table[0]
        gain = (default["latency_p50_ms"] / best["latency_p50_ms"] if cfg.objective == "latency_p50"
                else best["throughput_sps"] / default["throughput_sps"])
        chosen = {k: best[k] for k in ("intra_op_num_threads", "graph_optimization_level", "allow_spinning", "execution_mode")}
        info = cpu_info()
        _copy_model(source.path, ctx.out_dir)
        doc = {**chosen, "objective": cfg.objective, "batch_size": cfg.batch_size, "gain_vs_default": round(gain, 4),
               "cpu": info.model, "isa": resolve(ctx.target.isa), "load_average": round(load, 2), **state,
               "candidates": table}
        (ctx.out_dir / SESSION_OPTIONS_FILE).write_text(json.dumps(doc, indent=2) + "\n")
        metric = (f"p50 {best['latency_p50_ms']:.2f} ms vs {default['latency_p50_ms']:.2f} ms with the defaults"
                  if cfg.objective == "latency_p50" else
                  f"{best['throughput_sps']:.0f}/s vs {default['throughput_sps']:.0f}/s with the defaults")
        ctx.log(f"chose {best['label']}: {metric} ({gain:.2f}x)")
        return {
            "task": source.meta.get("task"), "labels": source.meta.get("labels"), "inputs": source.meta.get("inputs"),
            "outputs": source.meta.get("outputs"), "opset": source.meta.get("opset"), "family": source.meta.get("family"),
            "session_options": chosen, "tuning": table, "default_p50_ms": default["latency_p50_ms"], "gain": round(gain, 4),
            "isa": doc["isa"], "cpu": info.model, "load_average": round(load, 2), **state,
            "summary": f"{best['label']} of {len(table)} settings: {metric} ({gain:.2f}x)",
            "metrics": {"latency_p50_ms": best["latency_p50_ms"], "throughput_sps": best["throughput_sps"], "gain": round(gain, 4)},
        }

    def _texts(self, data: Artifact) -> list[Any]:
        from datasets import load_from_disk

        dd = load_from_disk(str(Path(data.path) / "data"))
        split = self.config.split
        if split not in dd or len(dd[split]) == 0:
            raise PassError(f"dataset {data.step!r} has no rows in split {split!r} (it has {', '.join(dd)}); set `split`")
        ds = dd[split]
        if "text" not in ds.column_names:
            raise PassError(f"dataset {data.step!r} has no `text` column (it has {ds.column_names}); load it with load_data `text`")
        if "text_pair" in ds.column_names:
            return list(zip(ds["text"], ds["text_pair"]))
        return list(ds["text"])


def latency_batches(rows: int, batch_size: int) -> int:
    """How many distinct batches to cycle through: the split's rows once, at most 200."""
    return max(1, min(200, rows // batch_size or 1))


def pick(table: list[dict[str, Any]], objective: str) -> dict[str, Any]:
    """The best candidate for the objective; a tie goes to the earlier one (the defaults come first)."""
    if objective == "latency_p50":
        return min(table, key=lambda row: row["latency_p50_ms"])
    return max(table, key=lambda row: row["throughput_sps"])


def _call(session: Any, feed: dict[str, Any]) -> Any:
    return lambda: session.run(None, feed)


def _copy_model(src: Path, dst: Path) -> None:
    """The input folder in `dst` (a copy: cache entries never share files), without an earlier tuning's options."""
    shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns(SESSION_OPTIONS_FILE))
