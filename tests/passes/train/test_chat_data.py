"""Chat data end to end: each format loads, tokenizes with the model's chat template, masks the right tokens,
trains a tiny model; malformed conversations are dropped with their reasons; the chat recipe's ShareGPT copy
gives the very token ids and label masks of its instruction pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from passes.base import PassError, SimpleContext
from passes.hf.chat import split_conversation
from passes.hf.loading import load_dataset_dict, load_tokenizer
from passes.sources.data import LoadData
from passes.train.data import IGNORE_INDEX, prepare_data
from passes.train.steps import Lora
from schemas.steps import LoadDataConfig, LoraConfig
from tests.builders import ROOT, make_artifact

SYSTEM = "answer in one word"
#: One conversation in three formats: a system turn, two questions, two answers.
TALK = [("user", "win cash now"), ("assistant", "spam"), ("user", "see you at home"), ("assistant", "ham")]


def _rows(fmt: str, n: int = 12) -> list[dict]:
    rows = []
    for i in range(n):
        talk = [(role, f"{text} {i}" if role == "user" else text) for role, text in TALK]
        if fmt == "messages":
            rows.append({"messages": [{"role": "system", "content": SYSTEM}] + [{"role": r, "content": c} for r, c in talk]})
        elif fmt == "sharegpt":
            names = {"user": "human", "assistant": "gpt"}
            rows.append({"system": SYSTEM, "conversations": [{"from": names[r], "value": c} for r, c in talk]})
        else:  # alpaca with LLaMA-Factory's history: the first exchange, then the instruction and its output
            rows.append({"system": SYSTEM, "history": [[talk[0][1], talk[1][1]]], "instruction": talk[2][1],
                         "input": "", "output": talk[3][1]})
    return rows


def _write(folder: Path, fmt: str, ext: str, rows: list[dict]) -> Path:
    path = folder / f"{fmt}.{ext}"
    if ext == "parquet":
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path)
    elif ext == "json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _load(tmp_path: Path, step: str, **fields) -> tuple[dict, object]:
    out = tmp_path / step
    out.mkdir()
    ctx = SimpleContext(step, out, workflow_dir=tmp_path, quiet=True)
    meta = LoadData(LoadDataConfig(type="load_data", **fields)).run({}, ctx)
    return meta, make_artifact("dataset", out, meta, step)


@pytest.mark.parametrize("fmt,ext", [("messages", "jsonl"), ("sharegpt", "json"), ("alpaca", "parquet")])
def test_each_format_loads_masks_the_assistant_turns_and_trains(fmt, ext, tmp_path, tiny_chat_llama_dir):
    path = _write(tmp_path, fmt, ext, _rows(fmt))
    named = fmt if fmt != "sharegpt" else "auto"  # sharegpt is detected by its `conversations` column
    meta, data = _load(tmp_path, "chat", path=path.name, format=named, splits={"train": 0.75, "validation": 0.25})
    assert meta["format"] == "chat" and meta["chat_format"] == fmt and meta["malformed"] == {}
    dd = load_dataset_dict(data)
    first = dd["train"][0]["messages"]
    assert [t["role"] for t in first] == ["system", "user", "assistant", "user", "assistant"]
    assert first[0]["content"] == SYSTEM and first[2]["content"] == "spam" and first[4]["content"] == "ham"

    tok = load_tokenizer(tiny_chat_llama_dir, causal=True)
    ctx = SimpleContext("s", tmp_path, quiet=True)
    segments = split_conversation(tok, first, meta["chat"])
    answers = [ids for ids, assistant in segments if assistant]
    assert [tok.decode(a) for a in answers] == ["spam<|im_end|>\n", "ham<|im_end|>\n"]
    assert sum((ids for ids, _ in segments), []) == tok(tok.apply_chat_template(first, tokenize=False),
                                                        add_special_tokens=False)["input_ids"]
    train, *_ = prepare_data(dd, tok, "causal-lm", 128, ctx, chat=meta["chat"])  # default: every assistant turn
    assert len(train) == len(dd["train"]) == 9
    for example, row in zip(train, dd["train"]):
        segs = split_conversation(tok, row["messages"], meta["chat"])
        assert example["input_ids"] == sum((ids for ids, _ in segs), [])
        assert example["labels"] == sum(([t if a else IGNORE_INDEX for t in ids] for ids, a in segs), [])
    last, *_ = prepare_data(dd, tok, "causal-lm", 128, ctx, chat=meta["chat"], train_on="last_turn")
    segs = split_conversation(tok, dd["train"][0]["messages"], meta["chat"])
    assert last[0]["labels"] == [IGNORE_INDEX] * sum(len(i) for i, _ in segs[:-1]) + segs[-1][0]
    everything, *_ = prepare_data(dd, tok, "causal-lm", 128, ctx, chat=meta["chat"], train_on="all")
    assert all(e["labels"] == e["input_ids"] for e in everything)

    out = tmp_path / "tune"
    out.mkdir()
    base = make_artifact("hf_model", tiny_chat_llama_dir, {"task": "causal-lm", "model_type": "llama"}, "llm")
    cfg = LoraConfig(type="lora", model="llm", data="chat", max_steps=1, batch_size=4, eval_strategy="no")
    result = Lora(cfg).run({"model": base, "data": data}, SimpleContext("tune", out, quiet=True))
    assert result["train_metrics"]["steps"] == 1 and result["chat"]["chat_template"] is True
    assert (out / "adapter_model.safetensors").is_file()


def test_malformed_conversations_are_dropped_with_their_reasons(tmp_path):
    good = _rows("messages", 4)
    bad = [
        {"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"},
                      {"role": "assistant", "content": "z"}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
    ]
    path = _write(tmp_path, "messages", "jsonl", good + bad)
    meta, _ = _load(tmp_path, "chat", path=path.name, splits={"train": 0.5, "test": 0.5})
    assert meta["malformed"] == {"unknown role 'tool'": 1, "empty user turn": 1, "two assistant turns in a row": 1,
                                 "no assistant turn": 1, "empty assistant turn": 1}
    assert meta["splits"]["train"]["rows"] + meta["splits"]["test"]["rows"] == 4

    only_bad = _write(tmp_path, "bad", "jsonl", bad)
    with pytest.raises(PassError, match=r"no usable conversation in bad.jsonl \(messages\): all were malformed "
                                        r"\(1 with unknown role 'tool', .*two assistant turns in a row"):
        _load(tmp_path, "bad", path=only_bad.name)
    with pytest.raises(PassError, match="not chat data I recognize"):
        _load(tmp_path, "csv", path=_write(tmp_path, "plain", "jsonl", [{"a": "b"}] * 4).name)


def test_the_chat_recipes_sharegpt_copy_gives_the_same_training_examples(tmp_path, tiny_chat_llama_dir):
    """The recipe's qa step on its pairs, and on the ShareGPT copy (`make_sharegpt_copy.py`): same splits, same ids,
    same label masks, with the model's chat template and the recipe's system prompt."""
    data_dir = ROOT / "pipelines" / "recipes" / "data"
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("make_sharegpt_copy", data_dir / "make_sharegpt_copy.py")
    script = module_from_spec(spec)
    spec.loader.exec_module(script)
    committed = (data_dir / "chatterbot_qa_sharegpt.jsonl").read_text(encoding="utf-8")
    assert committed == "\n".join(script.sharegpt_lines((data_dir / "chatterbot_qa.jsonl").read_text("utf-8"))) + "\n"

    common = dict(system_prompt="Answer in one or two sentences.", splits={"train": 0.8, "validation": 0.1, "test": 0.1})
    pairs_meta, pairs = _load(tmp_path, "pairs", path=str(data_dir / "chatterbot_qa.jsonl"), prompt="instruction",
                              response="response", chat_template=True, **common)
    chat_meta, chat = _load(tmp_path, "chat", path=str(data_dir / "chatterbot_qa_sharegpt.jsonl"), **common)
    assert chat_meta["splits"] == pairs_meta["splits"] and chat_meta["chat"] == pairs_meta["chat"]
    tok = load_tokenizer(tiny_chat_llama_dir, causal=True)
    ctx = SimpleContext("s", tmp_path, quiet=True)
    a = prepare_data(load_dataset_dict(pairs), tok, "causal-lm", 160, ctx, chat=pairs_meta["chat"])
    b = prepare_data(load_dataset_dict(chat), tok, "causal-lm", 160, ctx, chat=chat_meta["chat"])
    for split_a, split_b in zip(a[:2], b[:2]):
        assert split_a["input_ids"] == split_b["input_ids"] and split_a["labels"] == split_b["labels"]
    assert a[2] == b[2]  # the same truncation report

    from pipelines.validate import load_workflow

    recipe = ROOT / "pipelines" / "recipes" / "chat-smollm2-int4.yaml"  # the command the README gives
    qa = load_workflow(recipe, ["steps.qa.path=data/chatterbot_qa_sharegpt.jsonl", "steps.qa.prompt=null",
                                "steps.qa.response=null"]).workflow.steps["qa"]
    assert qa.is_chat() and qa.system_prompt == common["system_prompt"] and qa.splits == common["splits"]


def test_evaluate_scores_every_assistant_turn_of_chat_data(tmp_path, tiny_chat_llama_dir, make_ctx):
    """Perplexity on chat data: the loss of every assistant turn given the turns before it, which is the
    model's own loss on the conversation with everything but the assistant turns masked."""
    import math

    import torch

    from passes.evaluate.lm import load_lm
    from passes.evaluate.steps import Evaluate
    from schemas.steps import EvaluateConfig

    path = _write(tmp_path, "messages", "jsonl", _rows("messages", 8))
    meta, data = _load(tmp_path, "chat", path=path.name, splits={"train": 0.5, "test": 0.5})
    base = make_artifact("hf_model", tiny_chat_llama_dir, {"task": "causal-lm", "model_type": "llama"}, "llm")
    cfg = EvaluateConfig(type="evaluate", models=["llm"], data="chat", metrics=["perplexity", "generate"], threads=1,
                         max_new_tokens=3, generate_samples=1)
    result = Evaluate(cfg).run({"models": [base], "data": data}, make_ctx("report"))["metrics"]["llm"]

    runner = load_lm(base)
    total, tokens = 0.0, 0
    for row in load_dataset_dict(data)["test"]:
        segments = split_conversation(runner.tokenizer, row["messages"], meta["chat"])
        ids = sum((s for s, _ in segments), [])
        labels = sum(([t if a else IGNORE_INDEX for t in s] for s, a in segments), [])
        n = sum(t != IGNORE_INDEX for t in labels)
        with torch.no_grad():
            loss = runner.model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
        total, tokens = total + loss * n, tokens + n
    assert result["perplexity_tokens"] == tokens and result["samples"] == 4 * 2  # two assistant turns each
    assert math.isclose(result["perplexity"], math.exp(total / tokens), rel_tol=1e-4)
