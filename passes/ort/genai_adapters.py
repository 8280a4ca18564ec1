"""Multi-LoRA for onnxruntime-genai: the base built once with LoRA inputs, one `.onnx_adapter` per adapter.

`export_adapters(model_dir, {name: peft_dir}, out_dir, ...)` -> facts: the base is built with the model
builder's `adapter_path` (`passes.ort.genai_build.build_genai`), then the LoRA weights become optional graph
inputs whose default is an empty rank-0 tensor (so no adapter = the base model), plus `<name>.onnx_adapter`
per adapter (onnxruntime's `AdapterFormat`) and `adapters.json`. `passes.ort.genai_run.GenaiSession(dir)`
loads them into `og.Adapters`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from passes.base import PassError
from passes.ort.genai_build import ADAPTER_INT4_OPTIONS, build_genai, check_precision

#: The manifest of a folder's adapters (name -> file), next to genai_config.json.
ADAPTERS_FILE = "adapters.json"
_LORA_INPUT = re.compile(r"^model\.layers\.(\d+)\.(attn|mlp)\.(\w+)\.lora_([AB])\.MatMul\.weight$")
_BUILDER_GROUP = {"q_proj": "attn", "k_proj": "attn", "v_proj": "attn", "o_proj": "attn",
                  "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def _lora_weights(model_dir: Path, adapters: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """{adapter: {graph input name: float32 array}} as the builder lays LoRA out: A.T [in, r], (B * scaling).T [r, out]."""
    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = None
    for name, path in adapters.items():
        config = json.loads((Path(path) / "adapter_config.json").read_text())
        if config.get("peft_type") != "LORA" or config.get("use_dora") or config.get("bias", "none") != "none":
            raise PassError(f"adapter {name!r} is not a plain LoRA adapter (peft_type {config.get('peft_type')}, "
                            f"use_dora {config.get('use_dora')}, bias {config.get('bias')}): genai adapters are LoRA only")
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(base, str(path), adapter_name=name)
        else:
            peft_model.load_adapter(str(path), adapter_name=name)
    weights: dict[str, dict[str, Any]] = {name: {} for name in adapters}
    for qualified, module in peft_model.named_modules():  # type: ignore[union-attr]
        if not isinstance(module, LoraLayer):
            continue
        found = re.search(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)$", qualified)
        if not found or found.group(2) not in _BUILDER_GROUP:
            raise PassError(f"LoRA on {qualified!r}: the genai builder names LoRA weights only for the attention and "
                            f"MLP projections ({', '.join(_BUILDER_GROUP)})")
        layer, proj = found.groups()
        stem = f"model.layers.{layer}.{_BUILDER_GROUP[proj]}.{proj}"
        for name in adapters:
            if name in module.lora_A:
                a = module.lora_A[name].weight.detach().float()
                b = module.lora_B[name].weight.detach().float() * module.scaling[name]
                weights[name][f"{stem}.lora_A.MatMul.weight"] = a.T.contiguous().numpy()
                weights[name][f"{stem}.lora_B.MatMul.weight"] = b.T.contiguous().numpy()
    return weights


def _lora_node(input_name: str) -> str:
    """The builder's node name that consumes a LoRA weight (for int4_nodes_to_exclude)."""
    layer, group, proj, which = _LORA_INPUT.match(input_name).groups()  # type: ignore[union-attr]
    return f"/model/layers.{layer}/{group}/{proj}/lora_{which}/MatMul"


def _make_lora_inputs(genai_dir: Path) -> dict[str, tuple[list[int], str]]:
    """Turn the LoRA weight initializers of model.onnx into optional inputs (default: rank 0, i.e. no adapter).

    Returns {input name: (shape with -1 for the rank, numpy dtype name)}."""
    import numpy as np
    import onnx_ir as ir

    path = genai_dir / "model.onnx"
    model = ir.load(str(path))
    ir.external_data.load_to_model(model)
    found: dict[str, tuple[list[int], str]] = {}
    for name, value in list(model.graph.initializers.items()):
        if not _LORA_INPUT.match(name):
            if ".lora_" in name:
                raise PassError(f"LoRA weight {name!r} was quantized or renamed by the builder; keep LoRA nodes "
                                "out of int4 (int4_nodes_to_exclude) and use the default int4_algo_config")
            continue
        rows, cols = value.const_value.shape  # type: ignore[union-attr]
        dtype = value.const_value.dtype.numpy()  # type: ignore[union-attr]
        is_a = ".lora_A." in name
        empty = np.zeros((rows, 0) if is_a else (0, cols), dtype=dtype)
        value.const_value = ir.tensor(empty, name=name)
        value.shape = ir.Shape([rows, "lora_r"] if is_a else ["lora_r", cols])
        model.graph.inputs.append(value)
        found[name] = ([rows, -1] if is_a else [-1, cols], np.dtype(dtype).name)
    if not found:
        raise PassError("the builder wrote no LoRA weights into model.onnx; check that the adapters target "
                        "attention/MLP projections of the model")
    with tempfile.TemporaryDirectory(dir=genai_dir) as tmp:
        ir.save(model, str(Path(tmp) / "model.onnx"), external_data="model.onnx.data", size_threshold_bytes=1024)
        for item in Path(tmp).iterdir():
            os.replace(item, genai_dir / item.name)
    return found


def export_adapters(model_dir: Path, adapters: dict[str, Path], out_dir: Path, *, precision: str,
                    execution_provider: str, options: dict[str, Any], threads: int | None,
                    log: Callable[[str], None]) -> dict[str, Any]:
    """Build the base once with LoRA inputs and write `<name>.onnx_adapter` per PEFT adapter (+ adapters.json)."""
    import numpy as np
    import onnxruntime as ort

    if not adapters:
        raise PassError("export_adapters needs at least one adapter")
    for name in adapters:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise PassError(f"adapter name {name!r}: use letters, digits, '_', '-' or '.' (it names a file)")
    out_dir = Path(out_dir)
    check_precision(precision, execution_provider)
    log(f"reading {len(adapters)} LoRA adapter(s): {', '.join(adapters)}")
    weights = _lora_weights(Path(model_dir), adapters)
    widest = max(adapters, key=lambda n: len(weights[n]))
    options = dict(options)
    if precision == "int4":  # the LoRA MatMuls stay float: their weights are swapped at run time
        lora_nodes = sorted({_lora_node(k) for k in weights[widest]})
        options["int4_nodes_to_exclude"] = list(options.get("int4_nodes_to_exclude", [])) + lora_nodes
        if not any(k.startswith("int4_") and k != "int4_nodes_to_exclude" for k in options):
            options = {**ADAPTER_INT4_OPTIONS, **options} if execution_provider == "cpu" else options
    facts = build_genai(model_dir, out_dir, precision, execution_provider, options, threads, log,
                        adapter_path=adapters[widest])
    inputs = _make_lora_inputs(out_dir)
    manifest, described = {}, {}
    for name, params in weights.items():
        extra = sorted(set(params) - set(inputs))
        if extra:
            raise PassError(f"adapter {name!r} adapts modules the base was not built with ({', '.join(extra[:4])}...): "
                            f"export adapters that target the same modules (or a subset of {widest!r}'s)")
        fmt = ort.AdapterFormat()
        fmt.set_adapter_version(1)
        fmt.set_model_version(1)
        # OrtValue borrows the numpy buffer: keep the arrays alive until the file is written
        arrays = {k: np.ascontiguousarray(v, dtype=inputs[k][1]) for k, v in params.items()}
        fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in arrays.items()})
        file = f"{name}.onnx_adapter"
        fmt.export_adapter(str(out_dir / file))
        manifest[name] = file
        ranks = sorted({v.shape[1] for k, v in params.items() if ".lora_A." in k})
        described[name] = {"file": file, "bytes": (out_dir / file).stat().st_size, "parameters": len(params),
                           "rank": ranks[0] if len(ranks) == 1 else ranks}
        log(f"adapter {name}: {len(params) // 2} LoRA modules, rank {described[name]['rank']} -> {file}")
    (out_dir / ADAPTERS_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    facts["files"] = {p.name: p.stat().st_size for p in sorted(out_dir.iterdir()) if p.is_file()}
    facts["model_bytes"] = sum(s for n, s in facts["files"].items() if n.startswith("model.onnx"))
    return {**facts, "adapters": described, "lora_inputs": len(inputs)}
