"""The `model` source pass: a pretrained model from a folder, `pkg://`, the hub or a GGUF file -> `hf_model`.

The artifact is a plain `save_pretrained` folder (config, safetensors or `.bin` weights, tokenizer), so
every downstream pass loads it the same way whatever the source was. A folder whose weights already
have the requested dtype is copied file by file (no model is loaded: a copy of MiniLM takes a fraction
of a second); a dtype change or a GGUF file goes through transformers (`from_pretrained` +
`save_pretrained`). GGUF weights are dequantized once here and cached like any artifact.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from schemas.paths import PathResolutionError, looks_like_hub_id
from schemas.steps import ModelConfig

from passes.hf.folders import (
    classifier_labels,
    copy_files,
    download_model,
    human_count,
    infer_task,
    model_files,
    read_config,
    weights_info,
)
from passes.hf.loading import auto_class_for, load_tokenizer, quiet_transformers
from passes.base import MemoryUse, Pass, PassError, StepContext
from passes.registry import register_pass

#: Hub files worth downloading for a PyTorch model (the rest are other formats or documentation).
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja", "LICENSE*"]

@register_pass
class Model(Pass[ModelConfig]):
    """Bring a pretrained model into the cache as a `save_pretrained` folder, with its task and labels."""

    config_class = ModelConfig
    version = 2  # 2: GGUF byte-level tokenizers written as GPT-2 style (onnxruntime-genai reads them)
    #: Measured (benchmarks/jobs_sweep.py): a 92 MB model folder is copied (file by file) at a 46 MB peak.
    memory = MemoryUse(factor=0.0, base_mb=100)
    #: Not measured: a GGUF file is converted through transformers in fp32 (up to 4x an 8-bit file) beside torch.
    gguf_memory = MemoryUse(factor=4.0, base_mb=500)

    @classmethod
    def memory_for(cls, config: ModelConfig) -> MemoryUse:
        """A folder is copied; a GGUF file is converted in memory."""
        return cls.gguf_memory if config.gguf_file or str(config.path).endswith(".gguf") else cls.memory
    packages = ("transformers", "safetensors", "gguf")

    def run(self, inputs: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        """Locate the model, copy or convert it into `ctx.out_dir`, and describe it."""
        cfg = self.config
        folder, gguf_file, source = self._locate(ctx)
        if gguf_file is not None:
            self._convert_gguf(folder, gguf_file, ctx)
        else:
            self._copy_or_convert(folder, ctx)

        config = read_config(ctx.out_dir)
        inferred = infer_task(config)
        task = cfg.task or inferred
        head_added_later = inferred == "feature-extraction" and task in ("text-classification", "token-classification")
        if task != inferred and not head_added_later:
            # An encoder takes a classification head downstream; other mismatches are suspicious.
            ctx.log(f"note: task {cfg.task} given, but the architecture suggests {inferred}")
        labels = classifier_labels(config)
        num_parameters, dtype = weights_info(ctx.out_dir)
        model_type = config.get("model_type")
        architecture = (config.get("architectures") or [None])[0]
        summary = f"{model_type}, {human_count(num_parameters)} parameters, {task}"
        if labels:
            summary += f", labels {', '.join(labels)}"
        return {
            "task": task,
            "labels": labels,
            "model_type": model_type,
            "architecture": architecture,
            "num_parameters": num_parameters,
            "dtype": dtype,
            "source": source,
            "summary": summary,
        }

    # --- where the model comes from --------------------------------------------------------------

    def _locate(self, ctx: StepContext) -> tuple[Path, str | None, dict[str, Any]]:
        """(folder, GGUF file name or None, a description of the source for the meta)."""
        cfg = self.config
        value = cfg.path
        if looks_like_hub_id(value, ctx.workflow_dir):
            patterns = [cfg.gguf_file] if cfg.gguf_file else _HUB_PATTERNS + (["*.py"] if cfg.trust_remote_code else [])
            try:
                folder = download_model(value, cfg.revision, patterns)
                if cfg.gguf_file is None and not any(folder.glob("*.safetensors")):
                    folder = download_model(value, cfg.revision, patterns + ["pytorch_model*.bin"])
            except PassError as exc:
                # `models/enc` is also the shape of a hub id: say it is not a local folder either.
                raise PassError(f"{exc} (no local folder {ctx.workflow_dir / value} exists either)") from exc
            if cfg.gguf_file is not None and not (folder / cfg.gguf_file).is_file():
                raise PassError(
                    f"the hub model {value!r} has no file {cfg.gguf_file}: check `gguf_file` against its files"
                )
            return folder, cfg.gguf_file, {"hub_id": value, "revision": folder.name}
        if cfg.revision is not None:
            ctx.log(f"note: `revision` applies to hub ids only; ignored for {value}")
        try:
            path = ctx.resolve_path(value)
        except PathResolutionError as exc:
            raise PassError(str(exc)) from exc
        if not path.exists():
            raise PassError(
                f"{value}: no such folder ({path}); give a model folder, a hub id (org/name) or pkg://package/folder"
            )
        if path.is_file():
            if path.suffix != ".gguf" or cfg.gguf_file not in (None, path.name):
                raise PassError(
                    f"{value} is a file: `path` takes a model folder (or a .gguf file, or a folder with `gguf_file`)"
                )
            return path.parent, path.name, {"path": str(path)}
        if cfg.gguf_file is not None and not (path / cfg.gguf_file).is_file():
            present = sorted(p.name for p in path.glob("*.gguf"))
            raise PassError(
                f"{cfg.gguf_file} is not in {path}; "
                + (f"GGUF files there: {', '.join(present)}" if present else "the folder holds no .gguf file")
            )
        return path, cfg.gguf_file, {"path": str(path)}

    # --- a Hugging Face folder ---------------------------------------------------------------------

    def _copy_or_convert(self, folder: Path, ctx: StepContext) -> None:
        """Copy the model's files, or load and save them when the dtype must change."""
        cfg = self.config
        files = model_files(folder, cfg.trust_remote_code)
        _, stored = weights_info(folder)
        if stored is None or stored == cfg.dtype:
            sizes = sum(p.stat().st_size for p in files)
            with ctx.progress(sizes, "copying model files", unit="B") as bar:
                for path in files:
                    copy_files([path], ctx.out_dir)
                    bar.advance(path.stat().st_size)
            ctx.log(f"copied {len(files)} files ({sizes / 1e6:.1f} MB) from {folder}")
            return

        import torch

        # The class of the checkpoint's own head (not of the requested task), so nothing is dropped.
        auto = auto_class_for(infer_task(read_config(folder)))
        with ctx.progress(2, f"converting weights from {stored} to {cfg.dtype}") as bar:
            try:
                model = auto.from_pretrained(
                    str(folder), dtype=getattr(torch, cfg.dtype), trust_remote_code=cfg.trust_remote_code
                )
            except (OSError, ValueError) as exc:
                raise PassError(f"transformers cannot load {folder}: {exc}") from exc
            bar.advance(1)
            # Tokenizer and other side files first: save_pretrained then writes config and weights.
            copy_files([p for p in files if not _is_weights_or_config(p.name)], ctx.out_dir)
            model.save_pretrained(str(ctx.out_dir), safe_serialization=True)
            bar.advance(1)
        ctx.log(f"converted {folder} from {stored} to {cfg.dtype}")

    # --- a GGUF file ---------------------------------------------------------------------------------

    def _convert_gguf(self, folder: Path, name: str, ctx: StepContext) -> None:
        """Dequantize a GGUF file into a safetensors model with its tokenizer."""
        cfg = self.config
        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        path = folder / name
        architecture, n_tensors = gguf_header(path)
        ctx.log(f"converting {name} ({path.stat().st_size / 1e6:.0f} MB, architecture {architecture}) to {cfg.dtype}")
        # quiet: transformers' tokenizer notes ("legacy behaviour") are noise for a GGUF conversion.
        with quiet_transformers():
            with ctx.progress(n_tensors + 2, f"dequantizing {name}") as bar, _gguf_tensor_progress(bar):
                try:
                    model = AutoModelForCausalLM.from_pretrained(
                        str(folder), gguf_file=name, dtype=getattr(torch, cfg.dtype)
                    )
                    bar.update(description="reading the GGUF tokenizer")
                    tokenizer = load_tokenizer(folder, gguf_file=name)
                    bar.advance(1)
                except (ValueError, KeyError, NotImplementedError) as exc:
                    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

                    supported = ", ".join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))
                    raise PassError(
                        f"transformers {transformers.__version__} cannot load the GGUF architecture "
                        f"{architecture!r} of {name} ({exc}). It loads GGUF files of: {supported}. Use a model "
                        "of one of these architectures, or the original Hugging Face folder of this model."
                    ) from exc
                _fix_gguf_special_tokens(tokenizer, model.config)
                bar.update(description="saving safetensors")
                model.save_pretrained(str(ctx.out_dir), safe_serialization=True)
                tokenizer.save_pretrained(str(ctx.out_dir))
                _drop_gguf_copy(ctx.out_dir)
                if _fix_gguf_byte_level(ctx.out_dir, gguf_flag(path, "tokenizer.ggml.add_bos_token")):
                    ctx.log("tokenizer: GGUF byte-level BPE (GPT-2 style) written as such: no byte fallback, "
                            "no BOS unless the GGUF asks for one")
                bar.advance(1)


@contextlib.contextmanager
def _gguf_tensor_progress(bar: Any) -> Iterator[None]:
    """Route transformers' per-tensor dequantization loop to our bar instead of its own tqdm line.

    transformers iterates `tqdm(reader.tensors)` with a module-level `tqdm`, which neither its
    progress-bar switch nor the runner's display controls; the original is restored afterwards.
    """
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    original = gguf_utils.tqdm

    def tracked(iterable: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        for item in iterable:
            yield item
            bar.advance(1)

    gguf_utils.tqdm = tracked
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _fix_gguf_special_tokens(tokenizer: Any, config: Any) -> None:
    """Take eos/pad from the GGUF metadata (in the model config).

    transformers 4.57's GGUF llama converter sets the eos token to the *bos* token, so generation
    would never stop at the real end-of-turn token.
    """
    for attr in ("eos", "pad"):
        token_id = getattr(config, f"{attr}_token_id", None)
        if isinstance(token_id, int) and 0 <= token_id < len(tokenizer):
            token = tokenizer.convert_ids_to_tokens(token_id)
            if getattr(tokenizer, f"{attr}_token") != token:
                setattr(tokenizer, f"{attr}_token", token)


def gguf_flag(path: Path, key: str) -> bool | None:
    """A boolean metadata value of a GGUF file (None when absent)."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get(key)
    if field is None or not field.data:
        return None
    return bool(field.parts[field.data[0]][0])


def _fix_gguf_byte_level(folder: Path, add_bos: bool | None) -> bool:
    """Rewrite a GGUF byte-level BPE tokenizer as the GPT-2 style tokenizer it is; True when changed.

    transformers 4.57 converts a GGUF `gpt2` vocabulary (SmolLM2, Qwen...) for a llama architecture
    with the llama converter: ByteLevel pre-tokenization but SentencePiece-style byte fallback, a
    `▁`-replacing decoder, a BOS prepended to every text whatever the GGUF says, and the Llama tokenizer
    class. transformers copes, but onnxruntime-genai's tokenizer maps every space-led token to -1, so
    a genai export could not chat. The fixed files tokenize exactly as before, minus the stray BOS.
    """
    tok_file, cfg_file = folder / "tokenizer.json", folder / "tokenizer_config.json"
    if not tok_file.is_file():
        return False
    spec = json.loads(tok_file.read_text())
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback") or not any(p.get("type") == "ByteLevel" for p in parts):
        return False
    model["byte_fallback"] = False
    spec["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    if not add_bos:
        spec["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    tok_file.write_text(json.dumps(spec, ensure_ascii=False, indent=1))
    config = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    config.update(add_bos_token=bool(add_bos), add_eos_token=False, tokenizer_class="PreTrainedTokenizerFast",
                  model_input_names=["input_ids", "attention_mask"])
    config.pop("legacy", None)
    cfg_file.write_text(json.dumps(config, ensure_ascii=False, indent=2))
    return True


def _drop_gguf_copy(folder: Path) -> None:
    """Remove a `tokenizer.model` that is really the GGUF file (the tokenizer saves its source as vocab).

    It is not a sentencepiece model, so anything that read it as one would fail; `tokenizer.json` has
    the whole tokenizer.
    """
    vocab = folder / "tokenizer.model"
    if vocab.is_file():
        with vocab.open("rb") as f:
            if f.read(4) == b"GGUF":
                vocab.unlink()


def _is_weights_or_config(name: str) -> bool:
    """Files that `save_pretrained` writes itself (a stale copy would disagree with the new weights)."""
    return (
        name == "config.json"
        or name.endswith(".safetensors")
        or name.endswith(".bin")
        or name.endswith(".index.json")
    )


_GGUF_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_header(path: Path) -> tuple[str, int]:
    """(`general.architecture`, number of tensors) of a GGUF file, from its header.

    A direct read of the first key-value pairs: `gguf.GGUFReader` parses every field (the whole
    vocabulary) first, which takes seconds for a 50k-token model, just to name the architecture.
    """
    import struct

    def read(f: Any, fmt: str) -> Any:
        data = f.read(struct.calcsize(fmt))
        if len(data) != struct.calcsize(fmt):
            raise ValueError("the file ends inside its header")
        return struct.unpack(fmt, data)[0]

    def skip(f: Any, vtype: int) -> None:
        if vtype == _GGUF_STRING:
            f.seek(read(f, "<Q"), 1)
        elif vtype == _GGUF_ARRAY:
            inner, count = read(f, "<I"), read(f, "<Q")
            if inner in _GGUF_SCALAR_SIZES:
                f.seek(_GGUF_SCALAR_SIZES[inner] * count, 1)
            else:
                for _ in range(count):
                    skip(f, inner)
        elif vtype in _GGUF_SCALAR_SIZES:
            f.seek(_GGUF_SCALAR_SIZES[vtype], 1)
        else:
            raise ValueError(f"unknown value type {vtype}")

    try:
        with path.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise ValueError("it does not start with the GGUF magic bytes")
            if read(f, "<I") < 2:
                raise ValueError("GGUF version 1 is not supported")
            n_tensors = read(f, "<Q")
            for _ in range(read(f, "<Q")):
                key = f.read(read(f, "<Q")).decode("utf-8", "replace")
                vtype = read(f, "<I")
                if key == "general.architecture" and vtype == _GGUF_STRING:
                    return f.read(read(f, "<Q")).decode("utf-8", "replace"), n_tensors
                skip(f, vtype)
        raise ValueError("it has no general.architecture")
    except (ValueError, OSError, struct.error) as exc:
        raise PassError(
            f"{path.name} is not a readable GGUF file: {exc}; check the file (a partial download?)"
        ) from exc
