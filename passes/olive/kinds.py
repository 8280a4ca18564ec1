"""Our artifacts <-> Olive's model handlers: what Olive is given, and how its result becomes our folder.

Olive takes an `HfModel` (a `save_pretrained` folder and a task) or an `ONNXModel` (a folder and the
name of its .onnx file). It returns a model handler whose files live in its own output folder; this
module copies them into the step's folder in our layout (see passes/base.py):

- `HfModelHandler` -> `hf_model`: the save_pretrained folder as Olive wrote it (weights, config.json,
  tokenizer files). Olive's weight-only quantizers (Rtn, Gptq, ...) write `quant_method: olive` into
  config.json: that checkpoint loads in Olive's passes (ModelBuilder) and in onnxruntime-genai's builder,
  and in transformers only after `register_olive_quantizer()`: plain transformers silently re-initializes
  the packed layers, so the meta says `quantization: olive` for the steps downstream. What the pass
  attached to the model besides files (e.g. SelectiveMixedPrecision's plan) goes to ATTRIBUTES_FILE.
- `ONNXModelHandler` -> `onnx_model`: the model file as `model.onnx` (its external data beside it under the
  names the graph references), the files Olive lists as `additional_files`, then the input folder's
  companions that are missing (tokenizer, config.json, inference.py). A folder with `genai_config.json`
  (ModelBuilder) is a genai folder: onnxruntime-genai loads it as it is.
- anything else (composite or distributed models, OpenVINO, QNN contexts...) is refused with the handler's
  name: no step of this tool could read it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from passes.base import Artifact, PassError
from passes.hf.folders import CONFIG_FILE, FOREIGN_WEIGHTS, TOKENIZER_SUFFIXES, classifier_labels, infer_task, read_config
from passes.ort import files

#: Our task names -> the task names Olive's HfModel takes (transformers pipeline names).
OLIVE_TASKS = {
    "causal-lm": "text-generation",
    "text-classification": "text-classification",
    "token-classification": "token-classification",
    "feature-extraction": "feature-extraction",
}
#: Files of a genai folder that Olive's ModelBuilder writes besides the model.
GENAI_CONFIG = "genai_config.json"
#: What an Olive pass attached to an HF model besides its files (Olive's `model_attributes` minus config.json,
#: as Olive itself serializes a handler), e.g. SelectiveMixedPrecision's `mixed_precision_info` that Gptq and
#: Rtn read. Olive keeps it on the in-memory handler only; this file carries it to the next olive step.
ATTRIBUTES_FILE = "olive_model_attributes.json"


def our_task(source: Artifact) -> str:
    """The artifact's task in our names: its meta's, else inferred from its config.json."""
    return source.meta.get("task") or infer_task(read_config(source.path))


def input_model_config(source: Artifact) -> dict[str, Any]:
    """The Olive model config (`{"type", "config"}`) that points at our artifact's folder, in place."""
    if source.kind == "hf_model":
        task = our_task(source)
        config = {"model_path": str(source.path), "task": OLIVE_TASKS.get(task, task)}
        if (source.path / ATTRIBUTES_FILE).is_file():
            config["model_attributes"] = json.loads((source.path / ATTRIBUTES_FILE).read_text(encoding="utf-8"))
        return {"type": "HfModel", "config": config}
    if source.kind == "onnx_model":
        files.model_file(source, "Olive's ONNX passes take an export_onnx (or ONNX-producing olive) step")
        return {"type": "ONNXModel", "config": {"model_path": str(source.path), "onnx_file_name": files.MODEL_FILE}}
    raise PassError(f"step {source.step!r} is a {source.kind}; an olive step takes an hf_model or an onnx_model")


def register_olive_quantizer() -> None:
    """Teach transformers the `quant_method: olive` checkpoints Olive's Rtn/Gptq/... write (as Olive itself does)."""
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

    from olive.common.quant.hf_utils import OliveHfQuantizationConfig, OliveHfQuantizer

    AUTO_QUANTIZATION_CONFIG_MAPPING["olive"] = OliveHfQuantizationConfig
    AUTO_QUANTIZER_MAPPING["olive"] = OliveHfQuantizer


def collect_output(handler: Any, source: Artifact, out_dir: Path) -> dict[str, Any]:
    """Copy Olive's result into `out_dir` in our layout; returns {"kind", ...facts for the meta}."""
    from olive.model import HfModelHandler, ONNXModelHandler

    if isinstance(handler, HfModelHandler):
        return _collect_hf(handler, source, out_dir)
    if isinstance(handler, ONNXModelHandler):
        return _collect_onnx(handler, source, out_dir)
    raise PassError(f"Olive returned a {type(handler).__name__}, which no step of this tool takes "
                    "(olive steps produce an hf_model or a single-file onnx_model)")


def _collect_hf(handler: Any, source: Artifact, out_dir: Path) -> dict[str, Any]:
    if getattr(handler, "adapter_path", None):
        raise PassError("Olive returned a base model with a separate adapter: this tool takes adapters from its own "
                        "`lora` / `qlora` steps; use those, or an Olive pass that merges (MergeAdapterWeights)")
    folder = Path(handler.model_path)
    if not (folder / CONFIG_FILE).is_file():
        raise PassError(f"Olive's output {folder} is not a save_pretrained folder (no {CONFIG_FILE})")
    _copy_tree(folder, out_dir)
    _fill_tokenizer(source.path, out_dir)
    attributes = handler.to_json()["config"].get("model_attributes") or {}
    if attributes:
        (out_dir / ATTRIBUTES_FILE).write_text(json.dumps(attributes, indent=1, sort_keys=True, default=str),
                                               encoding="utf-8")
    config = read_config(out_dir)
    quant = (config.get("quantization_config") or {}).get("quant_method")
    task = our_task(source)
    return {
        "kind": "hf_model",
        "task": task,
        "labels": source.meta.get("labels") or classifier_labels(config),
        "model_type": config.get("model_type"),
        "architecture": (config.get("architectures") or [None])[0],
        "quantization": quant,
        "olive_attributes": sorted(attributes),
        "format": "hf",
    }


def _collect_onnx(handler: Any, source: Artifact, out_dir: Path) -> dict[str, Any]:
    model = Path(handler.model_path)  # the .onnx file itself (Olive resolves onnx_file_name)
    if not model.is_file():
        raise PassError(f"Olive reported the model {model}, but there is no such file")
    shutil.copy2(model, out_dir / files.MODEL_FILE)
    for data_file in _external_files(model):
        shutil.copy2(data_file, out_dir / data_file.name)
    extra = (handler.model_attributes or {}).get("additional_files") or []
    for name in extra:
        path = Path(name)
        if path.exists() and not (out_dir / path.name).exists():
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, out_dir / path.name)
    genai = (out_dir / GENAI_CONFIG).is_file()
    if source.kind == "onnx_model":
        for item in sorted(source.path.iterdir()):
            if item.is_file() and item.name not in {p.name for p in files.model_files(source.path)} \
                    and not item.name.startswith(".") and not (out_dir / item.name).exists():
                shutil.copy2(item, out_dir / item.name)
    else:
        _fill_tokenizer(source.path, out_dir)
    task = our_task(source)
    return {"kind": "onnx_model", "task": task, "labels": source.meta.get("labels"), "genai": genai,
            "format": "genai" if genai else "onnx"}


def _external_files(model: Path) -> list[Path]:
    """The external data files a model file (of any name) references."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo

    proto = onnx.load(str(model), load_external_data=False)
    found = {model.parent / ExternalDataInfo(t).location for t in proto.graph.initializer
             if t.data_location == onnx.TensorProto.EXTERNAL}
    found.discard(model)
    return sorted(found)


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy the top level of `src` into `dst` (sub-folders too, hidden files skipped)."""
    for item in sorted(src.iterdir()):
        if item.name.startswith("."):
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, dst / item.name)


def _fill_tokenizer(src: Path, dst: Path) -> None:
    """Copy config.json and the tokenizer files of an HF folder `src` that `dst` does not have yet."""
    for item in sorted(Path(src).iterdir()):
        name = item.name
        if not item.is_file() or name.startswith(".") or (dst / name).exists() or name.endswith(FOREIGN_WEIGHTS):
            continue
        if name.endswith(".safetensors") or name.endswith(".bin") or name.endswith(".index.json"):
            continue
        if name.endswith(".json") or name.endswith(TOKENIZER_SUFFIXES):
            shutil.copy2(item, dst / name)
