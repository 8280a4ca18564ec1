"""Olive's packed quantized checkpoints in PyTorch: load one as a model whose block scales train, save it back.

Olive's `Rtn`, `Gptq` and `QuaRot` + `Gptq` passes write a Hugging Face folder with `quant_method: olive` in its
`quantization_config`: each quantized linear layer is `<name>.qweight` (unsigned codes, two 4-bit codes per byte,
the lower one first, or one 8-bit code per byte, along the input dimension), `<name>.scales` (rows x blocks) and,
when asymmetric, `<name>.qzeros` (packed the same way); a layer's weight is `(code - zero) * scale` per block of
`group_size` inputs, the zero being 2^(bits-1) when symmetric. Per-layer `overrides` may change the bits. The
genai builder turns the same tensors into MatMulNBits nodes unchanged, so a scale trained here is the scale the
deployed model runs.

API:
- `load_packed_lm(folder)` -> (model, layers): the causal LM in fp32 with every packed layer replaced by a
  `BlockScaledLinear` (codes and zero points frozen, buffers; `scale_delta` a parameter: scale = s0 * (1 + delta)).
- `save_packed(model, layers, source, out_dir, keep)` writes `source` again with the trained scales and the
  listed plain parameters (`keep`: e.g. the norms) replaced; every other file and tensor is copied unchanged.

Why by hand: transformers cannot read the format (it loads random weights in place of the packed layers, see
`folders.refuse_packed_weights`), and Olive's own `QuantLinear` keeps its scales as buffers computed once, with no
way to train them; the packing follows Olive's `pack_to_uint8` layout (olive.common.quant.utils).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from passes.base import PassError
from passes.hf.folders import packed_quantization

#: The weights file Olive writes (one safetensors file: the models it quantizes fit one).
WEIGHTS_FILE = "model.safetensors"


def _unpack(packed: Any, bits: int, cols: int) -> Any:
    """Unsigned codes (int16, rows x cols) from Olive's packing along the last dimension."""
    import torch

    if bits == 8:
        return packed[:, :cols].to(torch.int16)
    if bits != 4:
        raise PassError(f"{bits}-bit packed layers are not supported (4 and 8 are)")
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).reshape(packed.shape[0], -1)[:, :cols].to(torch.int16)


def _module_class() -> Any:
    import torch
    import torch.nn.functional as F

    class BlockScaledLinear(torch.nn.Module):
        """A linear layer `(code - zero) * scale` per block, scales trainable as `s0 * (1 + scale_delta)`.

        The relative parameterization gives every layer the same learning-rate scale, whatever the size of
        its weights; `scale_delta` starts at 0, so the untrained layer is exactly the checkpoint's."""

        def __init__(self, codes: Any, zeros: Any, scales: Any, bits: int, bias: Any = None) -> None:
            super().__init__()
            rows, blocks = scales.shape
            self.bits, self.rows, self.cols = bits, rows, codes.shape[1]
            self.block = self.cols // blocks
            # code minus zero: -15..15 for 4 bits (1 byte per weight), -255..255 for asymmetric 8 bits (2 bytes)
            centered = codes - zeros.repeat_interleave(self.block, dim=1)
            centered = centered.to(torch.int8 if bits == 4 else torch.int16)
            self.register_buffer("centered", centered.reshape(rows, blocks, self.block), persistent=False)
            self.register_buffer("s0", scales.float().clone(), persistent=False)
            self.scale_delta = torch.nn.Parameter(torch.zeros(rows, blocks))
            self.bias = None if bias is None else torch.nn.Parameter(bias.float().clone(), requires_grad=False)

        def scales(self) -> Any:
            return self.s0 * (1 + self.scale_delta)

        def weight(self) -> Any:
            return (self.centered.float() * self.scales()[..., None]).reshape(self.rows, self.cols)

        def forward(self, x: Any) -> Any:
            return F.linear(x, self.weight(), self.bias)

    return BlockScaledLinear


def _layer_bits(quant: dict[str, Any], name: str) -> int:
    override = (quant.get("overrides") or {}).get(name) or {}
    return int(override.get("bits", quant.get("bits", 4)))


def load_packed_lm(folder: Path) -> tuple[Any, dict[str, Any]]:
    """The checkpoint in `folder` as a causal LM (fp32) plus {layer name: BlockScaledLinear} (module doc)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    quant = packed_quantization(folder)
    if not quant or quant.get("quant_method") != "olive":
        raise PassError(f"{folder} is not an Olive packed quantized checkpoint (`quant_method: olive` in its "
                        "config.json): give this step the output of an Olive `Gptq` or `Rtn` step")
    if not (folder / WEIGHTS_FILE).is_file():
        raise PassError(f"{folder} has no {WEIGHTS_FILE} (Olive writes its quantized checkpoints as one file)")
    config = AutoConfig.from_pretrained(str(folder))
    delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # every weight is then replaced or loaded
    tensors = load_file(str(folder / WEIGHTS_FILE))
    symmetric = bool(quant.get("symmetric", True))
    module_class, layers = _module_class(), {}
    for name in sorted(k[: -len(".qweight")] for k in tensors if k.endswith(".qweight")):
        parent_name, _, attr = name.rpartition(".")
        linear = getattr(model.get_submodule(parent_name), attr, None) if _has_module(model, parent_name) else None
        if not isinstance(linear, torch.nn.Linear):
            raise PassError(f"{folder}: packed layer {name!r} is not a linear layer of {type(model).__name__}")
        bits, scales = _layer_bits(quant, name), tensors[f"{name}.scales"]
        cols = linear.in_features
        if scales.dim() != 2 or scales.shape[0] != linear.out_features or cols % scales.shape[1]:
            raise PassError(f"{folder}: {name}.scales has shape {tuple(scales.shape)}, not {linear.out_features} rows "
                            f"of blocks over {cols} inputs")
        codes = _unpack(tensors[f"{name}.qweight"], bits, cols)
        if symmetric:
            zeros = torch.full(scales.shape, 1 << (bits - 1), dtype=torch.int16)
        else:
            zeros = _unpack(tensors[f"{name}.qzeros"], bits, scales.shape[1])
        layer = module_class(codes, zeros, scales, bits, tensors.get(f"{name}.bias"))
        setattr(model.get_submodule(parent_name), attr, layer)
        layers[name] = layer
    packed_keys = {f"{n}.{s}" for n in layers for s in ("qweight", "scales", "qzeros", "bias")}
    result = model.load_state_dict({k: v for k, v in tensors.items() if k not in packed_keys}, strict=False)
    if getattr(config, "tie_word_embeddings", False) and "lm_head" not in layers:
        model.tie_weights()
    own = {f"{n}.{s}" for n in layers for s in ("scale_delta", "bias")}
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) and "lm_head" not in layers else set()
    missing = [k for k in result.missing_keys if k not in own and k not in tied]
    if missing:
        raise PassError(f"{folder}: {WEIGHTS_FILE} has no values for {', '.join(missing[:5])}"
                        + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    return model.eval(), layers


def save_packed(model: Any, layers: dict[str, Any], source: Path, out_dir: Path, keep: list[str]) -> dict[str, Any]:
    """`source` copied to `out_dir` with each layer's trained scales (in the stored dtype) and the parameters named
    in `keep` (e.g. norms) written; codes, zero points and every other tensor and file unchanged. Returns facts."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name != WEIGHTS_FILE and item.is_file():
            shutil.copy2(item, out_dir / item.name)
    with safe_open(str(source / WEIGHTS_FILE), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    params = dict(model.named_parameters())
    moved, largest = [], 0.0
    with torch.no_grad():
        for name, layer in layers.items():
            stored = tensors[f"{name}.scales"]
            tensors[f"{name}.scales"] = layer.scales().to(stored.dtype).contiguous()
            moved.append(layer.scale_delta.abs().mean().item())
            largest = max(largest, layer.scale_delta.abs().max().item())
        for name in keep:
            tensors[name] = params[name].detach().to(tensors[name].dtype).contiguous()
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata=metadata)
    return {"layers": len(layers), "plain_tensors": len(keep),
            "mean_abs_scale_change": round(sum(moved) / max(len(moved), 1), 6),
            "max_abs_scale_change": round(largest, 6)}


def packed_summary(folder: Path) -> str:
    """`4-bit symmetric, block 32` for a packed checkpoint (with its 8-bit overrides counted)."""
    quant = packed_quantization(folder) or {}
    overrides = quant.get("overrides") or {}
    text = (f"{quant.get('bits', 4)}-bit {'symmetric' if quant.get('symmetric', True) else 'asymmetric'}, "
            f"block {quant.get('group_size')}")
    return text + (f", {len(overrides)} layers overridden" if overrides else "")


def _has_module(model: Any, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True
