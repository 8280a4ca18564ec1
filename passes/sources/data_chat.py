"""Chat data for `load_data`: OpenAI `messages`, ShareGPT and Alpaca rows -> one `messages` column.

Every format becomes a list of `{"role": system|user|assistant, "content": str}` turns, the form chat
templates take. A conversation that cannot be one (an unknown role, an empty turn, two assistant turns in
a row, a system turn after the first, no assistant turn at all) is dropped and counted by its reason.

- `messages`: `{"messages": [{"role": "user", "content": "..."}, ...]}` (OpenAI's chat format).
- `sharegpt`: `{"conversations": [{"from": "human", "value": "..."}, ...]}`; `human`/`gpt`/`system`
  (`user`/`assistant` too), and an optional top-level `system`.
- `alpaca`: `{"instruction": ..., "input": ..., "output": ...}`: one user turn (the instruction, then the
  input after a blank line) and the output as the answer; an optional `system` and LLaMA-Factory's
  `history` (`[[question, answer], ...]` before the instruction) make it multi-turn.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from passes.base import PassError
from passes.sources.data_files import as_text

#: The column a format is recognized by (`format: auto` with no column mapping), in order.
SIGNATURES = (("messages", ("messages",)), ("sharegpt", ("conversations",)), ("alpaca", ("instruction", "output")))
#: ShareGPT's speaker names -> roles.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
ROLES = ("system", "user", "assistant")


def detect_format(columns: list[str], where: str) -> str:
    """The chat format of a frame with these columns, or a PassError that says how to name it."""
    for name, needed in SIGNATURES:
        if all(c in columns for c in needed):
            return name
    raise PassError(
        f"{where} has no column mapped and is not chat data I recognize (columns: {', '.join(columns)}): map columns "
        "(`text` + `label` to classify, `prompt` + `response` for instruction pairs), or give chat data: a `messages` "
        "column (OpenAI format), `conversations` (ShareGPT) or `instruction`/`output` (Alpaca); `format:` names one"
    )


def _turns(value: Any) -> list[Any] | None:
    """A cell holding a list of turns as a Python list (datasets gives numpy arrays; a JSON string is read)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if value is None or isinstance(value, (dict, bytes)):
        return None
    try:
        return list(value)
    except TypeError:
        return None


def _from_messages(row: dict[str, Any]) -> list[dict[str, Any]] | str:
    turns = _turns(row.get("messages"))
    if turns is None:
        return "`messages` is not a list of turns"
    out = []
    for t in turns:
        if not isinstance(t, dict) or "role" not in t or "content" not in t:
            return "a turn without `role` and `content`"
        out.append({"role": as_text(t["role"]).strip(), "content": as_text(t["content"])})
    return out


def _from_sharegpt(row: dict[str, Any]) -> list[dict[str, Any]] | str:
    turns = _turns(row.get("conversations"))
    if turns is None:
        return "`conversations` is not a list of turns"
    system = as_text(row.get("system")).strip()
    out = [{"role": "system", "content": system}] if system else []
    for t in turns:
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            return "a turn without `from` and `value`"
        speaker = as_text(t["from"]).strip()
        out.append({"role": SHAREGPT_ROLES.get(speaker.lower(), speaker), "content": as_text(t["value"])})
    return out


def _from_alpaca(row: dict[str, Any]) -> list[dict[str, Any]] | str:
    system = as_text(row.get("system")).strip()
    out = [{"role": "system", "content": system}] if system else []
    history = row.get("history")
    for pair in _turns(history) or []:
        pair = _turns(pair)
        if pair is None or len(pair) != 2:
            return "a `history` entry that is not a [question, answer] pair"
        out += [{"role": "user", "content": as_text(pair[0])}, {"role": "assistant", "content": as_text(pair[1])}]
    instruction, extra = as_text(row.get("instruction")), as_text(row.get("input")).strip()
    question = f"{instruction}\n\n{extra}" if instruction.strip() and extra else instruction
    return out + [{"role": "user", "content": question}, {"role": "assistant", "content": as_text(row.get("output"))}]


READERS = {"messages": _from_messages, "sharegpt": _from_sharegpt, "alpaca": _from_alpaca}


def problem(turns: list[dict[str, Any]]) -> str | None:
    """Why a conversation cannot be trained on (None when it can)."""
    if not turns:
        return "no turns"
    for i, t in enumerate(turns):
        if t["role"] not in ROLES:
            return f"unknown role {t['role']!r}"
        if not t["content"].strip():
            return f"empty {t['role']} turn"
        if t["role"] == "system" and i > 0:
            return "a system turn after the first"
        if t["role"] == "assistant" and i > 0 and turns[i - 1]["role"] == "assistant":
            return "two assistant turns in a row"
        if t["role"] == "assistant" and not any(u["role"] == "user" for u in turns[:i]):
            return "an assistant turn before any user turn"
    if not any(t["role"] == "assistant" for t in turns):
        return "no assistant turn"
    return None


def to_conversations(df: Any, fmt: str, where: str) -> tuple[Any, Counter]:
    """A frame with one `messages` column (lists of role/content turns) and the dropped rows counted by reason."""
    import pandas as pd

    columns = [str(c) for c in df.columns]
    needed = dict(SIGNATURES)[fmt]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise PassError(f"`format: {fmt}` needs the column(s) {', '.join(missing)}, but {where} has: {', '.join(columns)}")
    read = READERS[fmt]
    kept, dropped = [], Counter()
    for row in df.to_dict(orient="records"):
        turns = read(row)
        reason = turns if isinstance(turns, str) else problem(turns)
        if reason is None:
            kept.append(turns)
        else:
            dropped[reason] += 1
    return pd.DataFrame({"messages": kept}), dropped


def dropped_text(dropped: Counter) -> str:
    """`3 with unknown role 'tool', 1 with two assistant turns in a row`."""
    return ", ".join(f"{n} with {reason}" for reason, n in dropped.most_common())


def conversation_chars(messages: list[dict[str, Any]]) -> int:
    """The characters of a conversation's turns (what `max_chars` bounds for chat data)."""
    return sum(len(t["content"]) for t in messages)


__all__ = ["detect_format", "to_conversations", "problem", "dropped_text", "conversation_chars"]
