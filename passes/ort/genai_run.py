"""Running causal LMs for the export check and `evaluate`: onnxruntime-genai folders and transformers models.

API (what the export and evaluate passes call):

- `GenaiSession(dir, threads)`: a genai folder loaded once (`og.Model`, its adapters from adapters.json, its
  tokenizer), with `threads` onnxruntime threads, else genai_config.json's count at most the CPUs this process
  may use (what the folder's inference.py runs with); `.threads` is the count it runs with (None: genai's own).
  Token ids always come from the folder's tokenizer through transformers: onnxruntime-genai's own tokenizer
  returns -1 ids for SmolLM2's GGUF-converted tokenizer.json here.
- `greedy_answer(session, ids, max_new_tokens, adapter)`: a greedy answer stopping at EOS;
  `smoke_test(dir, prompt, adapter)` answers through it, as the export's check that the folder runs.
- `response_logits`, `sequence_nll`: the logits and summed NLL of response tokens after a prompt.
- `torch_generate(model, tokenizer, ids, n, exact)`: the same greedy decoding through transformers.
- `timed_genai`, `timed_torch`, `speed_summary`: decode speed.

Perplexity: exp(mean NLL of the response tokens), the prompt as context (labels -100 on the prompt, as in
training). genai 0.14.1 does return whole-sequence logits (`Generator.get_output("logits")` after
`append_tokens`), so no raw onnxruntime session is needed; with `prune_lm_head` the model only returns the
last position's logits, so the response is then fed one token at a time (teacher forcing through the KV cache).

Decode speed: greedy, exactly `max_new_tokens` new tokens (EOS cannot end a run: genai `min_length` =
`max_length`, transformers `min_new_tokens`), time to first token = prefill + first token, tokens/s = the
decode rate after it; medians over runs.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from passes.hf.chat import encode_prompt
from passes.hf.loading import load_tokenizer
from passes.ort.genai_adapters import ADAPTERS_FILE
from passes.ort.sessions import cpu_cores
from passes.base import PassError


class GenaiSession:
    """An onnxruntime-genai folder loaded once: `og.Model`, its adapters (adapters.json) and its tokenizer."""

    def __init__(self, source: Any, threads: int | None = None) -> None:
        """`source`: a genai folder, or an `og.Model` already loaded (then without adapters or tokenizer)."""
        import onnxruntime_genai as og

        self.og = og
        self.threads: int | None = None
        if isinstance(source, (str, Path)):
            self.folder: Path | None = Path(source)
            self.model, self.threads = _load_model(og, self.folder, threads)
            manifest = self.folder / ADAPTERS_FILE
            self.adapter_files: dict[str, str] = json.loads(manifest.read_text()) if manifest.is_file() else {}
        else:
            self.folder, self.model, self.adapter_files = None, source, {}
        self.adapters = None
        if self.adapter_files:
            self.adapters = og.Adapters(self.model)
            for name, file in self.adapter_files.items():
                self.adapters.load(str(self.folder / file), name)  # type: ignore[operator]
        self._tokenizer = None

    @property
    def tokenizer(self) -> Any:
        """The folder's tokenizer through transformers (the ids every runtime is scored on)."""
        if self._tokenizer is None:
            if self.folder is None:
                raise PassError("a GenaiSession made from an og.Model has no tokenizer folder")
            self._tokenizer = load_tokenizer(self.folder)
        return self._tokenizer

    def generator(self, max_length: int, *, exact: bool = False, adapter: str | None = None) -> Any:
        """A greedy generator; `exact` makes EOS unable to end it before `max_length` tokens in all."""
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=max_length, **({"min_length": max_length} if exact else {}))
        gen = og.Generator(self.model, params)
        if adapter is not None:
            if adapter not in self.adapter_files:
                raise PassError(f"no adapter {adapter!r} in {self.folder} (it has {', '.join(self.adapter_files) or 'none'})")
            gen.set_active_adapter(self.adapters, adapter)
        return gen


def _session(model: Any) -> GenaiSession:
    return model if isinstance(model, GenaiSession) else GenaiSession(model)


def greedy_answer(session: GenaiSession, ids: list[int], max_new_tokens: int, adapter: str | None = None) -> str:
    """The greedy answer to prompt `ids`, stopping at EOS, decoded without special tokens."""
    gen = session.generator(len(ids) + max_new_tokens, adapter=adapter)
    gen.append_tokens(ids)
    while not gen.is_done():
        gen.generate_next_token()
    return session.tokenizer.decode(list(gen.get_sequence(0))[len(ids):], skip_special_tokens=True).strip()


def smoke_test(genai_dir: Path, prompt: str, adapter: str | None = None, max_new_tokens: int = 24) -> str:
    """Load the folder with onnxruntime-genai and answer `prompt`, with the tokenizer's chat template when it
    has one (PassError when the folder cannot run)."""
    try:
        session = GenaiSession(genai_dir)
        chat = {"chat_template": bool(getattr(session.tokenizer, "chat_template", None))}
        return greedy_answer(session, encode_prompt(session.tokenizer, prompt, chat), max_new_tokens, adapter)
    except PassError:
        raise
    except Exception as exc:  # onnxruntime-genai raises RuntimeError with the session's message
        raise PassError(f"onnxruntime-genai cannot run the exported folder {genai_dir}: {exc}") from exc


def response_logits(model: Any, prompt: list[int], response: list[int], *, adapter: str | None = None) -> Any:
    """float32 logits [len(response), vocab]: row i predicts response[i] (the prompt as context)."""
    import numpy as np

    if not prompt:
        raise PassError("a prompt needs at least one token (the first response token is predicted from it)")
    model = _session(model)
    gen = model.generator(len(prompt) + len(response) + 1, exact=True, adapter=adapter)
    gen.append_tokens(prompt)
    rows = [np.asarray(gen.get_output("logits"))[0, -1]]
    if len(response) > 1:
        gen.append_tokens(response[:-1])
        chunk = np.asarray(gen.get_output("logits"))[0]
        if chunk.shape[0] == len(response) - 1:
            rows.extend(chunk)
        else:  # prune_lm_head: only the last position has logits; rebuild and feed one token at a time
            gen = model.generator(len(prompt) + len(response) + 1, exact=True, adapter=adapter)
            gen.append_tokens(prompt)
            rows = [np.asarray(gen.get_output("logits"))[0, -1]]
            for token in response[:-1]:
                gen.append_tokens([token])
                rows.append(np.asarray(gen.get_output("logits"))[0, -1])
    return np.stack(rows).astype(np.float32)


def sequence_nll(model: Any, prompt: list[int], response: list[int], *, adapter: str | None = None) -> float:
    """Summed negative log-likelihood of `response` after `prompt` (a GenaiSession, og.Model or folder)."""
    import numpy as np

    logits = response_logits(_session(model), prompt, response, adapter=adapter).astype(np.float64)
    top = logits.max(axis=1, keepdims=True)
    logz = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return float((logz - logits[np.arange(len(response)), response]).sum())


def torch_generate(model: Any, tokenizer: Any, ids: list[int], n: int, exact: bool, streamer: Any = None) -> list[int]:
    """The new token ids of a greedy transformers generation (`exact`: EOS cannot end it before `n` tokens)."""
    import torch

    x = torch.tensor([ids])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                             pad_token_id=pad, streamer=streamer, **({"min_new_tokens": n} if exact else {}))
    return out[0, len(ids):].tolist()


# --- decode speed ---------------------------------------------------------------------------------------


def timed_genai(session: GenaiSession, ids: list[int], n: int, adapter: str | None = None) -> tuple[float, float]:
    """(seconds to the first token, seconds for all n tokens) of one greedy genai generation of exactly n tokens."""
    start = time.perf_counter()
    gen = session.generator(len(ids) + n, exact=True, adapter=adapter)
    gen.append_tokens(ids)
    gen.generate_next_token()
    first, count = time.perf_counter() - start, 1
    while not gen.is_done():
        gen.generate_next_token()
        count += 1
    total = time.perf_counter() - start
    if count != n:
        raise PassError(f"genai decoded {count} tokens instead of {n}")
    return first, total


class _FirstToken:
    """A transformers streamer noting when the first new token arrives (its 2nd `put`; the 1st is the prompt)."""

    def __init__(self, start: float) -> None:
        self.start, self.seconds, self.calls = start, None, 0

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2:
            self.seconds = time.perf_counter() - self.start

    def end(self) -> None:
        pass


def timed_torch(model: Any, tokenizer: Any, ids: list[int], n: int) -> tuple[float, float]:
    """(seconds to the first token, seconds for all n tokens) of one greedy transformers generation."""
    start = time.perf_counter()
    clock = _FirstToken(start)
    got = torch_generate(model, tokenizer, ids, n, exact=True, streamer=clock)
    total = time.perf_counter() - start
    if len(got) != n:
        raise PassError(f"transformers decoded {len(got)} tokens instead of {n}")
    return clock.seconds or total, total


def speed_summary(runs: Sequence[tuple[float, float]], n: int) -> dict[str, Any]:
    """Medians of (first, total) runs: tokens/s after the first token, time to first token in ms."""
    rates = [(n - 1) / (total - first) for first, total in runs if total > first]
    firsts = [first for first, _ in runs]
    return {"tokens_per_second": statistics.median(rates), "time_to_first_token_ms": statistics.median(firsts) * 1000,
            "new_tokens": n, "runs": len(runs)}


def configured_threads(folder: Path) -> int | None:
    """genai_config.json's `intra_op_num_threads` (None when the folder sets none)."""
    config = json.loads((folder / "genai_config.json").read_text())
    return config.get("model", {}).get("decoder", {}).get("session_options", {}).get("intra_op_num_threads")


def _load_model(og: Any, folder: Path, threads: int | None) -> tuple[Any, int | None]:
    """The folder's og.Model with `threads`, else its own count capped at this machine's CPUs; and that count.

    The same rule as the folder's inference.py (passes/templates/chat_genai.py, which runs without this
    package): a folder built on a bigger machine would start more threads than there are cores, and they
    would wait on each other. genai_config.json itself is left as it is (og.Config.overlay).
    """
    configured = configured_threads(folder)
    chosen = threads or (min(configured, cpu_cores()) if configured else None)
    if chosen is None or chosen == configured:
        return og.Model(str(folder)), chosen
    config = og.Config(str(folder))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": chosen}}}}))
    return og.Model(config), chosen
