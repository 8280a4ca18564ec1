"""Instruction pairs as token sequences: one formatting for training, evaluation and inference.

A dataset artifact of instruction data carries `meta["chat"]` (`chat_template`, `system_prompt`, set
by `load_data`). Every pass that tokenizes the pairs goes through `split_pair`, so the prompt a model
is trained on is the prompt it is evaluated and served with.

- `prompt_text(tokenizer, prompt, chat)`: the text a model is asked (chat template applied when asked).
- `encode_prompt(tokenizer, prompt, chat)`: the token ids of `prompt_text`.
- `split_pair(tokenizer, prompt, response, chat)`: (prompt token ids, response token ids); the response
  ends with the end-of-turn the template writes, or with EOS.
- `fit(prompt_ids, response_ids, max_length)`: both cut to fit, the response kept whole when it can be.
"""

from __future__ import annotations

from typing import Any

from passes.base import PassError

#: A prompt cut to fit keeps at least this share of `max_length` when the response alone is longer.
MIN_PROMPT_SHARE = 0.5


def chat_settings(meta: dict[str, Any]) -> dict[str, Any]:
    """The dataset meta's chat settings (defaults for datasets written before they existed)."""
    chat = meta.get("chat") or {}
    return {"chat_template": bool(chat.get("chat_template")), "system_prompt": chat.get("system_prompt")}


def _messages(prompt: str, chat: dict[str, Any]) -> list[dict[str, str]]:
    system = chat.get("system_prompt")
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def check_chat_template(tokenizer: Any, chat: dict[str, Any], where: str) -> None:
    """PassError when the data asks for a chat template that the tokenizer does not have."""
    if chat.get("chat_template") and not getattr(tokenizer, "chat_template", None):
        raise PassError(
            f"the data asks for the model's chat template (`chat_template: true`), but the tokenizer of {where} "
            "has none: set `chat_template: false` and give a `template` in load_data instead"
        )


def prompt_text(tokenizer: Any, prompt: str, chat: dict[str, Any]) -> str:
    """The text the model sees before its answer: the prompt itself, or the chat template's rendering."""
    if not chat.get("chat_template"):
        return prompt
    return tokenizer.apply_chat_template(_messages(prompt, chat), tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer: Any, prompt: str, chat: dict[str, Any]) -> list[int]:
    """The ids of `prompt_text`: the template writes its own special tokens, a plain prompt gets BOS."""
    return tokenizer(prompt_text(tokenizer, prompt, chat), add_special_tokens=not chat.get("chat_template"))["input_ids"]


def split_pair(tokenizer: Any, prompt: str, response: str, chat: dict[str, Any]) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) for one pair.

    Plain data: the prompt with the tokenizer's special tokens (BOS), the response without, then EOS.
    The two parts are tokenized separately, so the boundary is exact (tokenizing the joined string can
    merge tokens across it). Chat data: the template renders the whole conversation; the response part
    is what follows the generation prompt, so it ends with the template's own end-of-turn marker.
    """
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if not chat.get("chat_template"):
        p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"]
        return p, r + ([eos] if eos is not None else [])
    head = prompt_text(tokenizer, prompt, chat)
    full = tokenizer.apply_chat_template(
        _messages(prompt, chat) + [{"role": "assistant", "content": response}], tokenize=False
    )
    if not full.startswith(head):
        raise PassError("the chat template renders the assistant turn in a way that does not extend the prompt; "
                        "use a `template` in load_data instead of `chat_template: true`")
    p = tokenizer(head, add_special_tokens=False)["input_ids"]
    r = tokenizer(full[len(head):], add_special_tokens=False)["input_ids"]
    if eos is not None and eos not in r:
        r.append(eos)
    return p, r


def fit(prompt_ids: list[int], response_ids: list[int], max_length: int) -> tuple[list[int], list[int], str | None]:
    """Cut a pair to `max_length` tokens: (prompt ids, response ids, what was cut: None/'prompt'/'response').

    The response is what a model learns and is scored on, so the prompt gives way first: it loses
    tokens from its start (the question is usually at its end). Only a response longer than what is
    left after MIN_PROMPT_SHARE of the budget for the prompt is cut, at its end.
    """
    if len(prompt_ids) + len(response_ids) <= max_length:
        return prompt_ids, response_ids, None
    keep_prompt = min(len(prompt_ids), int(max_length * MIN_PROMPT_SHARE))
    if len(response_ids) <= max_length - keep_prompt:
        return prompt_ids[len(prompt_ids) - (max_length - len(response_ids)):], response_ids, "prompt"
    return prompt_ids[len(prompt_ids) - keep_prompt:], response_ids[: max_length - keep_prompt], "response"


__all__ = ["chat_settings", "check_chat_template", "encode_prompt", "fit", "prompt_text", "split_pair"]
