#!/usr/bin/env python
"""Chat with this model using onnxruntime-genai alone (no PyTorch, no transformers).

Needs only `pip install onnxruntime-genai`. Loads the folder this script is in (`genai_config.json`,
`model.onnx`, tokenizer files) and answers with greedy decoding, token by token as they come.

    python inference.py "What is AI?"                # one answer
    python inference.py                              # a chat: one question per line, empty line ends
    python inference.py --adapter tune_a "Hello"     # with a LoRA adapter exported next to the model
    python inference.py --system "Answer briefly." --max-new-tokens 64 "What is AI?"
    python inference.py --threads 4 "What is AI?"     # onnxruntime threads for this run

The prompt is formatted with the model's chat template (from its tokenizer files) when it has one.
Threads: genai_config.json holds the count the model was built for (the build machine's cores, or the
workflow's `target.threads`). On a machine with fewer CPUs that count is lowered to the CPUs this process may
use: more threads than cores wait on each other.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import onnxruntime_genai as og

HERE = Path(__file__).resolve().parent


def format_prompt(tokenizer: "og.Tokenizer", question: str, system: str | None, history: list[dict]) -> str:
    """The chat template's rendering of the conversation so far plus `question`, or `question` itself."""
    messages = ([{"role": "system", "content": system}] if system else []) + history
    messages.append({"role": "user", "content": question})
    try:
        return tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
    except Exception:  # no chat template in the tokenizer files: the raw question
        return question


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def thread_count(requested: int | None, configured: int | None, cpus: int) -> int | None:
    """The onnxruntime threads to run with: `requested`, else the configured count at most `cpus` (None: genai's)."""
    if requested:
        return requested
    return min(configured, cpus) if configured else None


def load_model(threads: int | None) -> "og.Model":
    """The model with `threads` onnxruntime threads, else genai_config.json's count capped at this machine's CPUs."""
    config = json.loads((HERE / "genai_config.json").read_text())
    configured = config.get("model", {}).get("decoder", {}).get("session_options", {}).get("intra_op_num_threads")
    chosen = thread_count(threads, configured, available_cpus())
    if chosen is None or chosen == configured:
        return og.Model(str(HERE))
    if not threads:
        print(f"genai_config.json asks for {configured} threads and this machine has {available_cpus()} CPUs: "
              f"using {chosen} (--threads to choose)", file=sys.stderr)
    og_config = og.Config(str(HERE))  # the folder's config with the thread count replaced, file untouched
    og_config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": chosen}}}}))
    return og.Model(og_config)


def answer(model: "og.Model", tokenizer: "og.Tokenizer", prompt: str, max_new_tokens: int,
           adapters: "og.Adapters | None", adapter: str | None, out=sys.stdout) -> str:
    """Greedy decoding of at most `max_new_tokens` tokens after `prompt`; streams them to `out`."""
    tokens = tokenizer.encode(prompt)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(tokens) + max_new_tokens)
    generator = og.Generator(model, params)
    if adapter:
        generator.set_active_adapter(adapters, adapter)
    generator.append_tokens(tokens)
    stream = tokenizer.create_stream()
    pieces = []
    while not generator.is_done():
        generator.generate_next_token()
        piece = stream.decode(generator.get_next_tokens()[0])
        pieces.append(piece)
        out.write(piece)
        out.flush()
    out.write("\n")
    return "".join(pieces).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("question", nargs="*", help="a question; none: read questions from standard input")
    parser.add_argument("--system", help="a system prompt")
    parser.add_argument("--adapter", help="the name of an .onnx_adapter file next to the model (without extension)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, help="onnxruntime threads (default: genai_config.json's, at most the "
                        "CPUs this machine has)")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be 1 or more")

    model = load_model(args.threads)
    tokenizer = og.Tokenizer(model)
    adapters = None
    if args.adapter:
        path = HERE / f"{args.adapter}.onnx_adapter"
        if not path.is_file():
            found = sorted(p.stem for p in HERE.glob("*.onnx_adapter"))
            parser.error(f"no adapter {args.adapter!r} here (adapters: {', '.join(found) or 'none'})")
        adapters = og.Adapters(model)
        adapters.load(str(path), args.adapter)
    if args.question:
        answer(model, tokenizer, format_prompt(tokenizer, " ".join(args.question), args.system, []),
               args.max_new_tokens, adapters, args.adapter)
        return 0
    history: list[dict] = []
    for line in sys.stdin:
        question = line.strip()
        if not question:
            break
        reply = answer(model, tokenizer, format_prompt(tokenizer, question, args.system, history),
                       args.max_new_tokens, adapters, args.adapter)
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    return 0


if __name__ == "__main__":
    sys.exit(main())
