"""Instruction pairs as token sequences: one formatting for training, evaluation and inference.

A dataset artifact of instruction data carries `meta["chat"]` (`chat_template`, `system_prompt`, set
by `load_data`). Every pass that tokenizes the pairs goes through `split_pair`, so the prompt a model
is trained on is the prompt it is evaluated and served with.

- `prompt_text(tokenizer, prompt, chat)`: the text a model is asked (chat template applied when asked).
- `encode_prompt(tokenizer, prompt, chat)`: the token ids of `prompt_text`.
- `split_pair(tokenizer, prompt, response, chat)`: (prompt token ids, response token ids); the response
  ends with the end-of-turn the template writes, or with EOS.
- `split_conversation(tokenizer, messages, chat)`: a whole conversation (chat data) as segments, each
  marked as an assistant turn or not.
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


def prompt_text(tokenizer: Any, prompt: str | list[dict[str, str]], chat: dict[str, Any]) -> str:
    """The text the model sees before its answer: the prompt itself, or the chat template's rendering
    (of the prompt as a user turn, or of a conversation's turns so far)."""
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(with_system(prompt, chat), tokenize=False, add_generation_prompt=True)
    if not chat.get("chat_template"):
        return prompt
    return tokenizer.apply_chat_template(_messages(prompt, chat), tokenize=False, add_generation_prompt=True)


def scored_answers(tokenizer: Any, example: tuple[str, str] | list[dict[str, str]],
                   chat: dict[str, Any]) -> list[tuple[list[int], list[int]]]:
    """(context ids, answer ids) for each answer of an example: the response of a pair, or every assistant
    turn of a conversation with all the turns before it as context (what perplexity is measured on)."""
    if not isinstance(example, list):
        return [split_pair(tokenizer, example[0], example[1], chat)]
    out, context = [], []
    for ids, assistant in split_conversation(tokenizer, example, chat):
        if assistant:
            out.append((list(context), ids))
        context += ids
    return out


def prompt_of(example: tuple[str, str] | list[dict[str, str]]) -> str | list[dict[str, str]]:
    """What a model is asked to answer: a pair's prompt, or a conversation up to its last assistant turn."""
    if not isinstance(example, list):
        return example[0]
    last = max(i for i, t in enumerate(example) if t["role"] == "assistant")
    return example[:last]


def shown_prompt(prompt: str | list[dict[str, str]]) -> str:
    """A prompt as a report shows it: the text, or a conversation's last user turn."""
    if isinstance(prompt, str):
        return prompt
    return next((t["content"] for t in reversed(prompt) if t["role"] == "user"), "")


def encode_prompt(tokenizer: Any, prompt: str | list[dict[str, str]], chat: dict[str, Any]) -> list[int]:
    """The ids of `prompt_text`: the template writes its own special tokens, a plain prompt gets BOS."""
    templated = chat.get("chat_template") or isinstance(prompt, list)
    return tokenizer(prompt_text(tokenizer, prompt, chat), add_special_tokens=not templated)["input_ids"]


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


def with_system(messages: list[dict[str, str]], chat: dict[str, Any]) -> list[dict[str, str]]:
    """A conversation with the data's `system_prompt` before it, unless it has a system turn of its own."""
    system = chat.get("system_prompt")
    if system and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system}] + list(messages)
    return list(messages)


def split_conversation(tokenizer: Any, messages: list[dict[str, str]], chat: dict[str, Any]) -> list[tuple[list[int], bool]]:
    """A conversation as [(token ids, is an assistant turn)], rendered by the model's chat template.

    Each assistant turn is what the template adds after the generation prompt of the turns before it,
    so it ends with the template's end-of-turn marker (the last one with EOS, if the template writes none),
    and each segment is tokenized on its own (the boundaries are exact, as in `split_pair`). A one-turn
    conversation gives exactly `split_pair`'s prompt and response. Turns after the last assistant turn
    are left out (nothing learns from them).
    """
    turns = with_system(messages, chat)
    answers = [i for i, t in enumerate(turns) if t["role"] == "assistant"]
    segments: list[tuple[list[int], bool]] = []
    done = ""
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
    for i in answers:
        head = tokenizer.apply_chat_template(turns[:i], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(turns[: i + 1], tokenize=False)
        if not head.startswith(done) or not full.startswith(head):
            raise PassError("the model's chat template renders a conversation in a way that does not extend its earlier "
                            "turns, so assistant turns cannot be told apart; use instruction pairs with a `template`")
        segments += [(ids(head[len(done):]), False), (ids(full[len(head):]), True)]
        done = full
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if segments and eos is not None and eos not in segments[-1][0]:
        segments[-1][0].append(eos)
    return segments


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


__all__ = ["chat_settings", "check_chat_template", "encode_prompt", "fit", "prompt_of", "prompt_text", "scored_answers",
           "shown_prompt", "split_conversation", "split_pair", "with_system"]
