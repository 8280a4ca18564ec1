"""Helpers for Hugging Face model folders: which files make a model, its weights' size and dtype, the task.

Used by the `model` source pass and reusable by any pass that reads or writes a `save_pretrained`
folder. Everything here reads metadata only (config.json, safetensors headers): no model is loaded.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from passes.base import PassError

#: A model folder's configuration, as transformers' `save_pretrained` writes it.
CONFIG_FILE = "config.json"
#: Files a tokenizer may consist of (besides its JSON files), at the top of a model folder.
TOKENIZER_SUFFIXES = (".txt", ".model", ".tiktoken", ".jinja", ".spm")
#: Weight formats of other frameworks or runtimes: never part of a PyTorch `hf_model` artifact.
FOREIGN_WEIGHTS = (".onnx", ".onnx_data", ".h5", ".msgpack", ".ot", ".gguf", ".tflite", ".pt", ".pth", ".ckpt")
#: Model types that are decoders: a causal LM even when the architecture names no head.
DECODER_MODEL_TYPES = frozenset({
    "llama", "gpt2", "gpt_neo", "gpt_neox", "gptj", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "mistral",
    "mixtral", "phi", "phi3", "phimoe", "gemma", "gemma2", "gemma3_text", "falcon", "bloom", "opt", "stablelm",
    "starcoder2", "codegen", "olmo", "olmo2", "granite", "cohere", "smollm3", "lfm2", "nemotron", "mpt",
    "deci", "mamba", "exaone", "internlm2", "deepseek_v2", "deepseek_v3", "gpt_bigcode", "gpt_oss",
})

_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def _is_weight_file(name: str) -> bool:
    return name.endswith(".safetensors") or (name.startswith("pytorch_model") and name.endswith(".bin"))


def model_files(folder: Path, trust_remote_code: bool = False) -> list[Path]:
    """The files of a model folder that make up the model: config, PyTorch weights, tokenizer.

    Only the folder's top level counts: sub-folders hold other exports (`onnx/`, `openvino/`),
    sentence-transformers modules (`1_Pooling/`) or training checkpoints. Safetensors win over
    `pytorch_model*.bin` when both are there; other frameworks' weights are skipped; Python files
    are taken only with `trust_remote_code` (they are the model's code then).
    """
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    has_safetensors = any(p.name.endswith(".safetensors") for p in files)
    chosen = []
    for p in files:
        name = p.name
        if name.endswith(FOREIGN_WEIGHTS):
            continue
        if _is_weight_file(name):
            if name.endswith(".bin") and has_safetensors:
                continue
            chosen.append(p)
        elif name.endswith(".json"):
            # The index of the format that is not taken would point at missing files.
            if name == "pytorch_model.bin.index.json" and has_safetensors:
                continue
            chosen.append(p)
        elif name.endswith(TOKENIZER_SUFFIXES) or name.upper().startswith(("LICENSE", "NOTICE", "README")):
            chosen.append(p)
        elif name.endswith(".py") and trust_remote_code:
            chosen.append(p)
    if not any(_is_weight_file(p.name) for p in chosen):
        found = ", ".join(p.name for p in files) or "nothing"
        raise PassError(
            f"{folder} has no PyTorch weights (model.safetensors or pytorch_model.bin); it holds: {found}. "
            "Point `path` at a Hugging Face model folder (for a GGUF file set `gguf_file`)."
        )
    if not (folder / CONFIG_FILE).is_file():
        raise PassError(f"{folder} has no {CONFIG_FILE}: point `path` at a folder written by save_pretrained")
    return chosen


def copy_files(files: list[Path], dest: Path) -> int:
    """Copy files into `dest` (flat); returns the bytes copied."""
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    for src in files:
        shutil.copyfile(src, dest / src.name)
        total += src.stat().st_size
    return total


def weights_info(folder: Path) -> tuple[int | None, str | None]:
    """(number of parameters, the most common floating dtype) from the weights, without loading the model.

    Parameters are the floating-point tensors, as `sum(p.numel() for p in model.parameters())` counts.

    Safetensors headers give both for the price of reading a few kilobytes. `.bin` checkpoints are
    memory-mapped with `torch.load(mmap=True)`, which reads no tensor data either.
    """
    counts: dict[str, int] = {}
    total = 0
    weights = sorted(p for p in folder.iterdir() if _is_weight_file(p.name))
    safetensors = [p for p in weights if p.name.endswith(".safetensors")]
    if safetensors:
        for path in safetensors:
            with path.open("rb") as f:
                size = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(size))
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                n = 1
                for dim in entry["shape"]:
                    n *= dim
                total += n
                counts[entry["dtype"]] = counts.get(entry["dtype"], 0) + n
    elif weights:
        import torch

        for path in weights:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            for tensor in state.values():
                total += tensor.numel()
                key = str(tensor.dtype).replace("torch.", "")
                counts[key] = counts.get(key, 0) + tensor.numel()
    else:
        return None, None
    named = {_DTYPE_NAMES.get(k, k): v for k, v in counts.items()}
    floats = {k: v for k, v in named.items() if k.startswith(("float", "bfloat"))}
    dtype = max(floats, key=floats.get) if floats else None
    # Integer tensors are buffers (BERT's position_ids), not parameters; count them only when nothing
    # else is there (a checkpoint of integer-packed quantized weights).
    return (sum(floats.values()) or total), dtype


def read_config(folder: Path) -> dict[str, Any]:
    """A model folder's `config.json` as a dict; `{}` when the folder has none.

    The one reader of config.json for every pass. A missing file is not an error here: ONNX folders may
    come without one and their readers fall back (no fusions, the graph's own inputs), and a folder
    that must hold one (a `save_pretrained` folder) is checked where it is taken in (`model_files`).
    A file that exists but cannot be read or parsed is a PassError naming it: falling back silently
    would change what a pass does without a word.
    """
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PassError(f"cannot read {path}: {exc}; fix the file or write it again with save_pretrained") from exc
    if not isinstance(config, dict):
        raise PassError(f"{path} holds a {type(config).__name__}, not a JSON object; write it again with save_pretrained")
    return config


#: `quant_method`s of checkpoints whose linear layers hold packed integer weights that onnxruntime-genai's
#: builder reads as they are (its quantized_model.py: AutoGPTQ, AutoAWQ, Quark and Olive's own format).
GENAI_READS_PACKED = ("olive", "gptq", "awq", "quark")


def packed_quantization(folder: Path) -> dict[str, Any] | None:
    """The `quantization_config` of a folder whose weights are packed (GENAI_READS_PACKED), else None."""
    quant = read_config(folder).get("quantization_config") or {}
    if isinstance(quant, dict) and quant.get("quant_method") in GENAI_READS_PACKED:
        return quant
    return None


def refuse_packed_weights(folder: Path, reader: str) -> None:
    """Refuse a folder holding Olive's packed quantized weights (`quant_method: olive`, written by Olive's Rtn,
    Gptq, KQuant... passes) before `reader` loads it with transformers.

    Why: transformers alone loads such a folder without an error but re-initializes the quantized layers with
    random weights, so a model would be evaluated, exported or trained on noise. onnxruntime-genai's builder
    (our genai export, Olive's ModelBuilder) reads the format.
    """
    quant = packed_quantization(folder)
    if quant and quant.get("quant_method") == "olive":
        raise PassError(f"{folder} holds Olive's packed quantized weights (quant_method: olive), which {reader} cannot "
                        "read (transformers would load random weights in their place): give this model to "
                        "`export_onnx` (the genai exporter) or `type: olive` with `pass: ModelBuilder`, which read "
                        "them, or quantize after this step")


def infer_task(config: dict[str, Any]) -> str:
    """The task a model is built for, from its config's architectures and model_type."""
    archs = config.get("architectures") or []
    for arch in archs:
        if arch.endswith("ForSequenceClassification"):
            return "text-classification"
        if arch.endswith("ForTokenClassification"):
            return "token-classification"
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return "causal-lm"
    if config.get("model_type") in DECODER_MODEL_TYPES:
        return "causal-lm"
    return "feature-extraction"


def classifier_labels(config: dict[str, Any]) -> list[str] | None:
    """Label names in id order when the config is a classifier with a head, else None."""
    archs = config.get("architectures") or []
    if not any(a.endswith(("ForSequenceClassification", "ForTokenClassification")) for a in archs):
        return None
    id2label = config.get("id2label") or {}
    if not id2label:
        return None
    ordered = sorted(((int(k), v) for k, v in id2label.items()))
    return [v for _, v in ordered]


def human_count(n: int | None) -> str:
    """22713216 -> '22.7M'."""
    if n is None:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def hub_offline() -> bool:
    """True when the environment forbids the Hugging Face hub (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    flags = (os.environ.get(v, "").strip().lower() for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag in ("1", "true", "yes", "on") for flag in flags)


def download_model(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    """Download the files of a hub model matching `patterns` (or take them from the local HF cache).

    Raises a PassError that says how to work offline when the hub cannot be reached.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_offline()
    unreachable = (
        f"the Hugging Face hub is not reachable{' (HF_HUB_OFFLINE is set)' if offline else ''} and "
        f"{repo_id!r} is not in the local Hugging Face cache: download the model to a local folder "
        f"(e.g. `huggingface-cli download {repo_id} --local-dir models/{repo_id.split('/')[-1]}`) "
        "and point `path` at it"
    )
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=offline))
    except GatedRepoError as exc:
        raise PassError(f"{repo_id!r} is gated: accept its license on the hub and log in (`hf auth login`)") from exc
    except RepositoryNotFoundError as exc:
        raise PassError(
            f"{repo_id!r} is not a model on the hub (or it is private: log in with `hf auth login`)"
        ) from exc
    except RevisionNotFoundError as exc:
        raise PassError(f"{repo_id!r} has no revision {revision!r}: give a branch, tag or commit that exists") from exc
    except LocalEntryNotFoundError as exc:
        raise PassError(unreachable) from exc
    except OSError as exc:  # requests' connection errors are OSErrors
        raise PassError(f"{unreachable} ({exc})") from exc
