"""`evaluate` for causal LMs: perplexity, sample answers, decode speed and size, side by side.

Models: Hugging Face folders (PyTorch, fp32), onnxruntime-genai folders (`export_onnx` with the genai
builder) and optimum ONNX exports (onnxruntime through optimum's ORTModelForCausalLM). The first model
is the baseline.

- perplexity: exp(mean negative log-likelihood of the response tokens), the prompt as context, on a
  dataset split of instruction pairs formatted exactly as training formatted them (`passes.hf.chat`); on
  chat data, of every assistant turn with the turns before it as context. Every model scores the same
  token ids.
- generate: greedy answers to the first prompts of the split (or the step's `prompts`), stopping at EOS.
- tokens_per_second / time_to_first_token: greedy decoding of exactly `max_new_tokens` tokens (EOS is
  not allowed to end a run early, so every run decodes the same count) after one formatted prompt.
  Time to first token covers the prompt's prefill and the first token; tokens/s is the decode rate
  after it. Runs are interleaved: in each of `generation_runs` rounds, every model decodes once, in a
  shuffled order, after one untimed warm-up generation each.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

from schemas.steps import EvaluateConfig

from passes.evaluate import machine
from passes.evaluate import report
from passes.evaluate.latency import SETTLE_S
from passes.hf.loading import load_tokenizer
from passes.hf.chat import chat_settings, check_chat_template, encode_prompt, fit, prompt_of, scored_answers, shown_prompt
from passes.evaluate.goals import apply_goals, with_goals
from passes.ort.genai_run import (GenaiSession, greedy_answer, sequence_nll, speed_summary, timed_genai,
                         timed_torch, torch_generate)
from passes.base import Artifact, PassError
from passes.hf.folders import refuse_packed_weights

#: Seed of the run order shuffling: a rerun interleaves the models in the same order.
SHUFFLE_SEED = 0
#: Untimed generations per model before timing (the first run allocates caches and buffers).
WARMUP_GENERATIONS = 1


class TorchLM:
    """A Hugging Face causal LM in PyTorch, or an optimum ONNX export through ORTModelForCausalLM."""

    def __init__(self, artifact: Artifact) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.artifact, folder = artifact, Path(artifact.path)
        self.tokenizer = load_tokenizer(folder)
        if artifact.kind == "onnx_model":
            from optimum.onnxruntime import ORTModelForCausalLM

            self.model = ORTModelForCausalLM.from_pretrained(folder, use_cache=True, provider="CPUExecutionProvider")
            self.runtime = "onnxruntime (optimum)"
        else:
            refuse_packed_weights(folder, "evaluate (PyTorch)")
            self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            self.runtime = "PyTorch fp32"

    def nll(self, prompt_ids: list[int], response_ids: list[int]) -> float:
        """Summed negative log-likelihood of the response tokens given the prompt."""
        import torch

        ids = torch.tensor([prompt_ids + response_ids])
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()
        start = len(prompt_ids)
        logp = torch.log_softmax(logits[start - 1 : -1], dim=-1)
        target = torch.tensor(response_ids)
        return float(-logp.gather(1, target[:, None]).sum())

    def timed(self, prompt_ids: list[int], new_tokens: int) -> tuple[float, float]:
        """(seconds to the first token, seconds for all `new_tokens`) of one greedy generation."""
        return timed_torch(self.model, self.tokenizer, prompt_ids, new_tokens)

    def answer(self, prompt_ids: list[int], max_new_tokens: int) -> str:
        tokens = torch_generate(self.model, self.tokenizer, prompt_ids, max_new_tokens, exact=False)
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()


class GenaiLM:
    """An onnxruntime-genai folder (genai_config.json), run with onnxruntime-genai (`passes.ort.genai_run.GenaiSession`)."""

    def __init__(self, artifact: Artifact, threads: int | None = None) -> None:
        self.artifact, self.folder = artifact, Path(artifact.path)
        # `threads` when the evaluate step names them, else the folder's own (as its inference.py runs it)
        self.session = GenaiSession(self.folder, threads)
        # The folder's tokenizer through transformers: every model scores identical token ids.
        self.tokenizer = self.session.tokenizer
        providers = _genai_providers(self.folder)
        count = self.session.threads
        used = f"{count} thread{'s' if count != 1 else ''}" if count else "genai's default threads"
        self.runtime = f"onnxruntime-genai ({', '.join(providers) or 'cpu'}, {used})"

    def nll(self, prompt_ids: list[int], response_ids: list[int]) -> float:
        return sequence_nll(self.session, prompt_ids, response_ids)

    def timed(self, prompt_ids: list[int], new_tokens: int) -> tuple[float, float]:
        return timed_genai(self.session, prompt_ids, new_tokens)

    def answer(self, prompt_ids: list[int], max_new_tokens: int) -> str:
        return greedy_answer(self.session, prompt_ids, max_new_tokens)


def _genai_providers(folder: Path) -> list[str]:
    """The execution providers genai_config.json asks for (empty: the CPU)."""
    try:
        config = json.loads((folder / "genai_config.json").read_text())
    except (OSError, ValueError):
        return []
    options = config.get("model", {}).get("decoder", {}).get("session_options", {}).get("provider_options", [])
    return [name for entry in options for name in entry]


def load_lm(artifact: Artifact, threads: int | None = None) -> TorchLM | GenaiLM:
    """The right runner for a model artifact (genai folders with `threads` when given); PassError for what is not
    a causal LM."""
    if artifact.meta.get("task") not in (None, "causal-lm"):
        raise PassError(f"model {artifact.step!r} is a {artifact.meta.get('task')} model; perplexity, generate and "
                        "tokens/s measure causal LMs")
    folder = Path(artifact.path)
    if artifact.kind == "onnx_model":
        if (folder / "genai_config.json").is_file():
            return GenaiLM(artifact, threads)
        if artifact.meta.get("format") == "optimum" or (folder / "config.json").is_file():
            return TorchLM(artifact)
        raise PassError(f"model {artifact.step!r} is an ONNX model without genai_config.json or config.json: "
                        "export causal LMs with `exporter: genai` or `exporter: optimum`")
    return TorchLM(artifact)


def _pairs(data: Artifact, cfg: EvaluateConfig) -> tuple[list[Any], dict[str, Any]]:
    """The split's examples (prompt/response pairs, or conversations of chat data) and the data's chat settings."""
    from datasets import load_from_disk

    if data.meta.get("format") not in ("instruction", "chat"):
        raise PassError(f"dataset {data.step!r} is {data.meta.get('format')!r} data; perplexity and generation need "
                        "instruction data (`prompt`/`response` in load_data) or chat data")
    dd = load_from_disk(str(Path(data.path) / "data"))
    if cfg.split not in dd:
        raise PassError(f"dataset {data.step!r} has no split {cfg.split!r} (it has {', '.join(dd)}); set `split`")
    ds = dd[cfg.split]
    if cfg.max_samples is not None:
        ds = ds.select(range(min(cfg.max_samples, len(ds))))
    if len(ds) == 0:
        raise PassError(f"split {cfg.split!r} of {data.step!r} is empty")
    if "messages" in ds.column_names:
        return list(ds["messages"]), chat_settings(data.meta)
    return list(zip(ds["prompt"], ds["response"])), chat_settings(data.meta)


def evaluate_lms(cfg: EvaluateConfig, models: list[Artifact], data: Artifact, ctx: Any, threads: int,
                 size_of: Any, environment: dict[str, Any]) -> dict[str, Any]:
    """Measure every model; write metrics.json and the report; return the step's meta."""
    pairs, chat = _pairs(data, cfg)
    runners = {}
    for art in models:
        ctx.log(f"loading {art.step} ({art.kind})")
        runners[art.step] = load_lm(art, cfg.threads)
    tokenizer = runners[models[0].step].tokenizer  # one tokenization for every model: identical inputs
    check_chat_template(tokenizer, chat, f"model {models[0].step!r}")
    results: dict[str, dict[str, Any]] = {n: {"kind": r.artifact.kind, "runtime": r.runtime} for n, r in runners.items()}
    payload: dict[str, Any] = {"models": results, "baseline": models[0].step, "config": cfg.model_dump(mode="json"),
                               "environment": environment, "chat": chat}

    if "tokens_per_second" in cfg.metrics or "time_to_first_token" in cfg.metrics:
        # Timed before the perplexity pass: after a burst of work the cores stop working in parallel for a while.
        payload["timing"] = _time(runners, tokenizer, prompt_of(pairs[0]), chat, cfg, ctx, results, threads)
    if "perplexity" in cfg.metrics:
        # every answer (a pair's response, each assistant turn of a conversation) given what came before it
        encoded = [fit(p, r, cfg.max_length)[:2] for example in pairs for p, r in scored_answers(tokenizer, example, chat)]
        tokens = sum(len(r) for _, r in encoded)
        with ctx.progress(len(encoded) * len(runners), "perplexity") as bar:
            for name, runner in runners.items():
                total = 0.0
                for p_ids, r_ids in encoded:
                    total += runner.nll(p_ids, r_ids)
                    bar.advance(1)
                results[name].update(perplexity=math.exp(total / tokens), perplexity_tokens=tokens,
                                     samples=len(encoded))
    if "generate" in cfg.metrics:
        prompts = list(cfg.prompts or [prompt_of(example) for example in pairs[: cfg.generate_samples]])
        payload["samples"] = []
        with ctx.progress(len(prompts) * len(runners), "sample answers") as bar:
            for prompt in prompts:
                ids = encode_prompt(tokenizer, prompt, chat)
                answers = {}
                for name, runner in runners.items():
                    answers[name] = runner.answer(ids, cfg.max_new_tokens)
                    bar.advance(1)
                payload["samples"].append({"prompt": shown_prompt(prompt), "answers": answers})
    if "size" in cfg.metrics:
        for art in models:
            results[art.step]["size_mb"] = size_of(art) / 1e6

    baseline = models[0].step
    add_lm_comparisons(results, baseline)
    payload["goals"], goal_meta = apply_goals(cfg, results, ctx.log)
    (ctx.out_dir / "metrics.json").write_text(json.dumps(payload, indent=2) + "\n")
    report.write_lm_report(ctx.out_dir, payload, step=ctx.step)
    summary = with_goals(report.lm_summary_line(results, baseline), payload["goals"])
    ctx.log(summary)
    return {"metrics": results, "baseline": baseline, "summary": summary, **goal_meta}


def _time(runners: dict[str, Any], tokenizer: Any, prompt: Any, chat: dict[str, Any], cfg: EvaluateConfig, ctx: Any,
          results: dict[str, dict[str, Any]], threads: int) -> dict[str, Any]:
    ids = encode_prompt(tokenizer, prompt, chat)
    n = cfg.max_new_tokens
    ctx.log(f"timing {len(runners)} model(s): greedy, {len(ids)} prompt tokens, {n} new tokens, {threads} thread(s) "
            f"for PyTorch (genai folders: their own), {WARMUP_GENERATIONS} warm-up + {cfg.generation_runs} timed "
            "generations each, interleaved")
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    order = random.Random(SHUFFLE_SEED)
    with ctx.progress((WARMUP_GENERATIONS + cfg.generation_runs) * len(runners), "decode speed") as bar:
        for name, runner in runners.items():
            for _ in range(WARMUP_GENERATIONS):
                runner.timed(ids, n)
                bar.advance(1)
        parallel = machine.settle(threads, ctx.target.device, ctx.log)
        schedule = []
        for _ in range(cfg.generation_runs):
            names = list(runners)
            order.shuffle(names)
            schedule.append(names)
            for name in names:
                time.sleep(SETTLE_S)  # untimed: the previous model's idle threads stop spinning (see passes.evaluate.latency)
                samples[name].append(runners[name].timed(ids, n))
                bar.advance(1)
    for name, runs in samples.items():
        speed = speed_summary(runs, n)
        results[name].update(
            tokens_per_second=speed["tokens_per_second"], time_to_first_token_ms=speed["time_to_first_token_ms"],
            new_tokens=n, prompt_tokens=len(ids), generation_runs=speed["runs"],
            threads=runners[name].session.threads if isinstance(runners[name], GenaiLM) else threads, **parallel,
        )
    return {"schedule": schedule, "runs_s": {k: [list(r) for r in v] for k, v in samples.items()}}


def add_lm_comparisons(results: dict[str, dict[str, Any]], baseline: str) -> None:
    """`perplexity_ratio` (model / baseline), `tokens_per_second_ratio` (model / baseline), `size_ratio`."""
    base = results[baseline]
    for m in results.values():
        if "perplexity" in m and base.get("perplexity"):
            m["perplexity_ratio"] = m["perplexity"] / base["perplexity"]
        if "tokens_per_second" in m and base.get("tokens_per_second"):
            m["tokens_per_second_ratio"] = m["tokens_per_second"] / base["tokens_per_second"]
        if "size_mb" in m and base.get("size_mb"):
            m["size_ratio"] = m["size_mb"] / base["size_mb"]


__all__ = ["GenaiLM", "TorchLM", "evaluate_lms", "load_lm"]
