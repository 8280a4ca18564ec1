"""Which parts of a model train: LoRA target modules per architecture, and partial fine-tuning's freezing.

- `default_target_modules(model)`: the LoRA targets when the step names none.
- `new_module_paths(keys)`: the modules behind parameters `from_pretrained` had to initialize.
- `freeze_all_but_last(model, n)`: freeze everything except the last n transformer blocks, the final
  norm and the head (BERT `encoder.layer`, Llama `model.layers`, GPT-2 `transformer.h`, ...).
"""

from __future__ import annotations

from typing import Any

from passes.base import PassError

#: Every linear layer of a Llama-style block: attention and MLP (QLoRA's finding: adapting all of them
#: matches full fine-tuning far better than attention alone, for little extra cost).
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

#: Where the transformer blocks live, by the last part of the ModuleList's name.
BLOCK_LIST_NAMES = ("layer", "layers", "h", "blocks")


def default_target_modules(model: Any) -> list[str] | str:
    """LoRA targets for `model` when the step names none.

    Llama-like decoders (every name of LLAMA_TARGETS present): all seven projections. Otherwise PEFT's
    own default for the model type (BERT: `query`, `value`), else every linear layer except the
    output head (PEFT's `all-linear`).

    For BERT, query+value is also what measured best here: on MiniLM + SMS spam, adding `key` and
    `dense` (attention output, both MLP layers, pooler) doubled the training time on 2 cores for no
    gain in validation or test accuracy.
    """
    import torch
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_defaults

    linear = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    if set(LLAMA_TARGETS) <= linear:
        return list(LLAMA_TARGETS)
    model_type = getattr(model.config, "model_type", None)
    if model_type in peft_defaults:
        return list(peft_defaults[model_type])
    return "all-linear"


def new_module_paths(keys: list[str]) -> list[str]:
    """`['classifier.weight', 'classifier.bias']` -> `['classifier']`: modules whose weights are new."""
    return sorted({k.rsplit(".", 1)[0] for k in keys if "." in k})


def find_blocks(model: Any) -> tuple[str, Any]:
    """(name, ModuleList) of the model's transformer blocks; PassError when there is not exactly one."""
    import torch

    found = [
        (name, module) for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0 and name.rsplit(".", 1)[-1] in BLOCK_LIST_NAMES
    ]
    if len(found) != 1:
        what = ", ".join(n for n, _ in found) or "none"
        raise PassError(
            f"cannot tell which are the transformer blocks of this {type(model).__name__} (lists found: {what}); "
            "train_layers knows BERT-like `encoder.layer`, Llama-like `model.layers` and GPT-2 `transformer.h`: "
            "leave train_layers unset to train every layer"
        )
    return found[0]


def freeze_all_but_last(model: Any, n: int, log: Any) -> dict[str, Any]:
    """Freeze every parameter except the last `n` blocks, the final norm and the head; describe what trains.

    The head is everything outside the base model (`classifier`, `score`, `lm_head`) plus a pooler.
    A head tied to the input embeddings (most small decoders) stays frozen: training it would train
    the embedding of every token, which is not "the last n blocks".
    """
    name, blocks = find_blocks(model)
    if n > len(blocks):
        log(f"train_layers {n} > the model's {len(blocks)} blocks: training all {len(blocks)}")
        n = len(blocks)
    for p in model.parameters():
        p.requires_grad = False
    parts: list[Any] = list(blocks[len(blocks) - n:]) if n else []
    # The final norm: a norm that is a sibling of the block list (Llama `model.norm`, GPT-2 `transformer.ln_f`).
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    norms = [(child_name, child) for child_name, child in parent.named_children() if "norm" in type(child).__name__.lower()]
    parts += [child for _, child in norms]
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    head_names = []
    if base is not None and base is not model:
        for child_name, child in model.named_children():
            if child is not base:
                parts.append(child)
                head_names.append(child_name)
        pooler = getattr(base, "pooler", None)
        if pooler is not None:
            parts.append(pooler)
            head_names.append(f"{prefix}.pooler")
    for part in parts:
        for p in part.parameters():
            p.requires_grad = True
    tied = False
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    if out_emb is not None and in_emb is not None and out_emb.weight is in_emb.weight:
        in_emb.weight.requires_grad = False
        tied = True
        log("the output head is tied to the input embeddings: it stays frozen")
    return {"blocks": f"{name}[{len(blocks) - n}:{len(blocks)}]", "norms": [c for c, _ in norms],
            "head": head_names, "tied_head_frozen": tied}
