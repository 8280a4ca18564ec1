"""ONNX steps: `export_onnx` and `quantize`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from ..base import Adapter, Dataset, HfModel, OnnxModel, Ref, StepConfig
from ..registry import register_step
from ..target import Target


#: onnxruntime-genai model builder execution providers, and the target device each is the default for.
GENAI_PROVIDERS = ("cpu", "cuda", "dml", "webgpu", "NvTensorRtRtx")
GENAI_PROVIDER_FOR_DEVICE = {"cpu": "cpu", "gpu": "cuda", "npu": "cpu"}


@register_step
class ExportOnnxConfig(StepConfig):
    """Export a Hugging Face model to ONNX: encoders with torch.onnx (checked against PyTorch), causal
    LMs with the onnxruntime-genai model builder (a deployable genai folder) or optimum."""

    type: Literal["export_onnx"] = Field(description="Export a model to ONNX.")
    model: Ref[HfModel] = Field(description="The model step to export.")
    exporter: Literal["auto", "torch", "optimum", "genai"] = Field(
        "auto",
        description="auto: `genai` for causal LMs, `torch` for encoders. torch: torch.onnx (encoders). "
        "optimum: optimum's main_export (causal LMs: text-generation-with-past, for plain onnxruntime). "
        "genai: the onnxruntime-genai model builder (causal LMs: a folder `onnxruntime_genai.Model` loads).",
    )
    opset: int = Field(17, ge=14, le=23, description="The ONNX opset (torch and optimum exporters).")
    atol: float = Field(
        1e-4, gt=0, le=1, description="The largest absolute difference from PyTorch's outputs allowed on sample inputs."
    )
    check_samples: int = Field(4, ge=1, le=256, description="How many sample inputs the check runs.")
    precision: Literal["fp32", "fp16", "int8", "int4"] | None = Field(
        None,
        description="genai: the builder's precision; default int4 for CPU and NPU targets, fp16 for GPU targets. "
        "The other exporters write fp32 (quantize afterwards).",
    )
    execution_provider: str | None = Field(
        None,
        description=f"genai: the execution provider the model is built for ({', '.join(GENAI_PROVIDERS)}); "
        "default from the workflow target's device (cpu -> cpu, gpu -> cuda).",
    )
    genai_options: dict[str, str | int | float | bool | list[str]] = Field(
        default_factory=dict,
        description="genai: model-builder options (e.g. int4_block_size, int4_is_symmetric, prune_lm_head), plus "
        "`int8_nodes` (MatMul nodes kept at 8 bits in an int4 build; `sensitive`: lm_head and the QKV/down projections "
        "of a third of the layers; `qkv`: every layer's QKV projections). Any int4_* option replaces the tuned int4 "
        "defaults, chosen per CPU instruction set (target.isa): int4 embedding and prune_lm_head everywhere; AVX2 and "
        "other CPUs without VNNI: symmetric block 32; VNNI and arm64: asymmetric block 64, int8_nodes [sensitive, qkv].",
    )
    builder_defaults: bool = Field(
        False,
        description="genai: run the model builder with its own defaults only (what Olive's ModelBuilder pass "
        "writes), instead of the thread setting and int4 options this pass tunes; for comparisons.",
    )
    adapters: list[Ref[Adapter]] = Field(
        default_factory=list,
        description="genai: LoRA adapter steps trained on `model`; the base is exported once with LoRA inputs and each "
        "adapter becomes `<step>.onnx_adapter`, switched at run time with onnxruntime-genai's Adapters API.",
    )

    output_kind: ClassVar[str] = "onnx_model"

    @property
    def uses_target(self) -> bool:  # type: ignore[override]
        """A genai export is built for the target's execution provider unless the step names one."""
        return self.exporter in ("auto", "genai") and (self.execution_provider is None or self.precision is None)

    @property
    def uses_isa(self) -> bool:  # type: ignore[override]
        """A genai int4 cpu export with no `int4_*` option takes its int4 options per instruction set."""
        return (self.exporter in ("auto", "genai") and self.precision in (None, "int4") and not self.builder_defaults
                and self.execution_provider in (None, "cpu") and not self.adapters
                and not any(k.startswith("int4_") for k in self.genai_options))

    @model_validator(mode="after")
    def _check(self) -> "ExportOnnxConfig":
        if self.exporter in ("torch", "optimum"):
            for name in ("precision", "execution_provider"):
                if getattr(self, name) not in (None, "fp32"):
                    raise ValueError(f"`{name}` applies to `exporter: genai`; with {self.exporter}, add a quantize step")
            if self.genai_options or self.adapters or self.builder_defaults:
                raise ValueError(f"`genai_options`, `builder_defaults` and `adapters` apply to `exporter: genai`, "
                                 f"not {self.exporter}")
        if self.execution_provider is not None and self.execution_provider not in GENAI_PROVIDERS:
            raise ValueError(f"unknown execution_provider {self.execution_provider!r}; "
                             f"the genai builder knows {', '.join(GENAI_PROVIDERS)}")
        if len(set(self.adapters)) != len(self.adapters):
            raise ValueError("`adapters` names a step twice")
        return self


@register_step
class QuantizeConfig(StepConfig):
    """Quantize an ONNX model with onnxruntime's quantization tools."""

    type: Literal["quantize"] = Field(description="Quantize an ONNX model.")
    model: Ref[OnnxModel] = Field(description="The ONNX model step.")
    method: Literal["dynamic_int8", "static_int8", "int4", "fp16"] | None = Field(
        None,
        description="dynamic_int8: int8 weights, activations quantized at run time; static_int8: QDQ, "
        "calibrated on `data`; int4: weight-only MatMulNBits; fp16: float16 weights and activations. Default: what "
        "the step's target runs best (cpu: dynamic_int8 for encoders, int4 for causal LMs; gpu: fp16 for encoders, "
        "int4 for causal LMs; npu: static_int8 QDQ on every quantizable op, int4 for causal LMs).",
    )
    activation_type: Literal["uint8", "uint16"] | None = Field(
        None,
        description="static_int8: the activations' type. Default: uint16 for QNN (its HTP runs 16-bit activations with "
        "8-bit weights at near-fp32 accuracy), uint8 otherwise (the x86 and OpenVINO/VitisAI fast path).",
    )
    data: Ref[Dataset] | None = Field(None, description="Calibration data (static_int8, and npu targets' default).")
    split: Literal["train", "validation", "test"] = Field("train", description="The split calibration samples come from.")
    calibration: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="Calibration method (static_int8).")
    calibration_samples: int = Field(128, ge=1, le=100000, description="How many samples calibrate (static_int8).")
    per_channel: bool = Field(True, description="Per-channel weight scales (int8).")
    weight_type: Literal["qint8", "quint8"] = Field(
        "qint8", description="Weight type for int8 (qint8 is ~1.9x faster than quint8 on x86 CPUs)."
    )
    block_size: int = Field(32, ge=16, le=256, description="Block size for int4 (a power of two).")
    symmetric: bool = Field(True, description="Symmetric int4 quantization.")
    algorithm: Literal["rtn", "hqq"] = Field("rtn", description="int4 algorithm.")
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        4,
        description="int4: MatMulNBits compute precision (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations). "
        "4 ran MiniLM 1.2x faster than fp32 compute with the same test predictions; other EPs ignore it.",
    )
    op_types: list[str] | None = Field(
        None,
        min_length=1,
        description="Only quantize these operator types. Default per method: dynamic_int8 every type it supports; "
        "static_int8 MatMul, Gemm and Gather; int4 MatMul; fp16 every type onnxruntime can run in float16.",
    )
    exclude_nodes: list[str] = Field(default_factory=list, description="Node names to leave unquantized.")
    exclude_op_types: list[str] = Field(default_factory=list, description="Operator types to leave unquantized.")
    fuse: bool = Field(
        True,
        description="dynamic_int8: first fuse attention, embeddings and Gelu with onnxruntime's transformer "
        "optimizer (BERT-family encoders; SkipLayerNorm left unfused for x86 CPUs, where it is slow), so attention "
        "quantizes into QAttention (~1.2x faster at 2 threads); with `op_types` set, only when they name a fused "
        "op (Attention, EmbedLayerNormalization). Off: standard ONNX int8 operators only.",
    )

    output_kind: ClassVar[str] = "onnx_model"

    @property
    def uses_target(self) -> bool:  # type: ignore[override]
        """The target picks the method when none is set, and static QDQ's op set and activation type."""
        return self.method in (None, "static_int8")

    @property
    def uses_isa(self) -> bool:  # type: ignore[override]
        """dynamic_int8 fuses the encoder first, with SkipLayerNorm as the CPU's instruction set runs it best."""
        return self.method in (None, "dynamic_int8") and self.fuse

    def needs_calibration_data(self, target: Target | None = None) -> bool:
        """True when this step runs static QDQ, which is calibrated on `data`: the one statement of that rule.

        That is an explicit `static_int8`, or (given the step's effective `target`) no `method` on an npu
        target, where an encoder defaults to static QDQ (passes/onnx/quant_plan.py). Validation reports a
        missing `data` for either case, so the pass never starts without it.
        """
        return self.method == "static_int8" or (self.method is None and target is not None and target.device == "npu")

    def target_issues(self, target: Target) -> list[tuple[tuple, str, str | None]]:
        """An npu target makes the default method static QDQ, which is calibrated on `data`."""
        if self.data is None and self.needs_calibration_data(target):
            return [(("data",), "on an npu target quantize defaults to static QDQ, which is calibrated on data: "
                     "set `data` to a load_data step",
                     "or set `method` (int4 for a causal LM, which NPUs run through onnxruntime-genai builds)")]
        return []

    @model_validator(mode="after")
    def _check(self) -> "QuantizeConfig":
        if self.data is None and self.needs_calibration_data():
            raise ValueError("`static_int8` is calibrated on data: set `data` to a load_data step")
        if self.activation_type is not None and self.method not in (None, "static_int8"):
            raise ValueError(f"`activation_type` applies to static_int8, not {self.method}")
        if self.method == "int4" and self.block_size & (self.block_size - 1):
            raise ValueError(f"`block_size` must be a power of two (got {self.block_size})")
        return self


@dataclass(frozen=True)
class QuantPlan:
    """What a quantize step does: the method, static QDQ's activation type and op profile, and why.

    Declared here because it is recorded in the step's meta (`choices`); `passes.onnx.quant_plan` decides it.

    profile (static_int8): `cpu` quantizes MatMul/Gemm/Gather (the x86 fast path); `qnn` every op QNN
    takes, with onnxruntime's QNN overrides (get_qnn_qdq_config); `npu` every op the QDQ quantizer knows.
    """

    method: str
    activation_type: str | None
    profile: str | None
    reason: str

    def as_dict(self) -> dict:
        """JSON-able, for the step's meta and run.json."""
        return asdict(self)


@register_step
class OptimizeOnnxConfig(StepConfig):
    """Optimize an ONNX graph: onnxruntime's transformer fusions, offline graph optimization, fp16 for GPUs."""

    type: Literal["optimize_onnx"] = Field(description="Optimize an ONNX model's graph.")
    model: Ref[OnnxModel] = Field(description="The ONNX model step.")
    model_type: str | None = Field(
        None,
        description="The transformer optimizer's model type (bert, gpt2, gpt_neox, phi, t5, bart, vit, swin, clip, ...); "
        "default from config.json's model_type (BERT-family encoders -> bert); `none` skips the fusions.",
    )
    num_heads: int | None = Field(None, ge=1, description="Attention heads; default from config.json.")
    hidden_size: int | None = Field(None, ge=1, description="Hidden size; default from config.json.")
    level: Literal["none", "basic", "extended", "layout", "all"] = Field(
        "basic",
        description="onnxruntime's offline graph optimization after the fusions. basic (constant folding, redundant "
        "nodes) keeps standard operators, so quantize can follow; extended/layout/all add provider-specific fused "
        "kernels: only for a final model on the same provider.",
    )
    skip_layer_norm: bool | None = Field(
        None,
        description="Fuse SkipLayerNormalization. Default: not for x86 CPUs (`target.isa`, detected by default: "
        "slower than Add + LayerNormalization there), yes for arm64 CPUs and other devices.",
    )
    fusion_options: dict[str, bool] = Field(
        default_factory=dict,
        description="Other FusionOptions switches by attribute name (e.g. enable_gelu: false, enable_bias_gelu: false).",
    )
    fp16: bool | None = Field(
        None, description="Convert to float16 (inputs and outputs keep their types). Default: yes on gpu targets."
    )
    fp16_op_block_list: list[str] = Field(
        default_factory=list,
        description="Operator types kept in float32 besides onnxruntime's default list (those without fp16 kernels "
        "or whose fp16 results overflow).",
    )
    atol: float = Field(
        1e-3, gt=0, le=1, description="Largest absolute output difference from the input model allowed (float32 results)."
    )

    output_kind: ClassVar[str] = "onnx_model"
    uses_target: ClassVar[bool] = True  # SkipLayerNorm, fp16 and provider-specific levels follow the target

    @property
    def uses_isa(self) -> bool:  # type: ignore[override]
        """On cpu targets the SkipLayerNorm fusion follows the instruction set unless the step sets it."""
        return self.skip_layer_norm is None
