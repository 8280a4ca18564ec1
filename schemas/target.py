"""Targets: the device and ONNX Runtime execution providers a workflow (or one step) runs on, and the
pure logic that decides which providers a session gets.

No ML library is imported here. `pipeline validate` finds the available providers from the installed
distributions (importlib.metadata), the passes from onnxruntime itself (passes/ort/providers.py); both
hand the names to `select_providers`, so one function decides, and tests fake the list.

A device's default providers are candidates in order of preference: the first one available is used,
with the CPU provider after it for the operators the accelerator does not take. Providers named in
`providers` are all used, in that order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import PipelineError

Device = Literal["cpu", "gpu", "npu"]
#: The CPU instruction-set classes (what `auto` resolves to; passes/ort/isa.py detects this machine's), e.g. as
#: keys of per-ISA settings.
IsaName = Literal["avx512_vnni", "avx2_vnni", "avx512", "avx2", "x86", "arm64", "generic"]
#: What a cpu target can be built for: `auto` (the machine that runs the step) or one of them.
CpuIsa = Literal["auto", IsaName]  # nested Literals flatten
CPU = "CPUExecutionProvider"

#: Candidate providers per device, in order of preference (the first available one is used).
DEFAULT_PROVIDERS: dict[str, list[str]] = {
    "cpu": [CPU],
    "gpu": ["CUDAExecutionProvider", "TensorrtExecutionProvider", "DmlExecutionProvider"],
    "npu": ["QNNExecutionProvider", "OpenVINOExecutionProvider", "VitisAIExecutionProvider"],
}

#: Option values ONNX Runtime takes for a provider (it reads them all as strings).
OptionValue = str | int | float | bool


@dataclass(frozen=True)
class ProviderSource:
    """Where an execution provider comes from: distributions with it built in, or a plugin package."""

    packages: tuple[str, ...]
    install: str
    #: (distribution, module) of a plugin EP package whose module's `get_library_path()` gives the library.
    plugin: tuple[str, str] | None = None


#: What ships each provider, and what to tell a user who lacks it.
PROVIDER_SOURCES: dict[str, ProviderSource] = {
    CPU: ProviderSource(("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml",
                         "onnxruntime-qnn"), "onnxruntime"),
    "AzureExecutionProvider": ProviderSource(("onnxruntime", "onnxruntime-gpu"), "onnxruntime"),
    "CUDAExecutionProvider": ProviderSource(
        ("onnxruntime-gpu",), "onnxruntime-gpu (an NVIDIA GPU with CUDA 12 and cuDNN 9; it replaces onnxruntime)"),
    "TensorrtExecutionProvider": ProviderSource(
        ("onnxruntime-gpu",), "onnxruntime-gpu and NVIDIA TensorRT (libnvinfer on the library path)"),
    "DmlExecutionProvider": ProviderSource(("onnxruntime-directml",), "onnxruntime-directml (Windows only)"),
    "OpenVINOExecutionProvider": ProviderSource(
        ("onnxruntime-openvino",), "onnxruntime-openvino (Intel CPU, GPU and NPU; it replaces onnxruntime)"),
    "QNNExecutionProvider": ProviderSource(
        (), "onnxruntime-qnn (Qualcomm Snapdragon NPUs; a plugin EP, registered by name)",
        plugin=("onnxruntime-qnn", "onnxruntime_qnn")),
    "VitisAIExecutionProvider": ProviderSource(
        ("onnxruntime-vitisai",), "the onnxruntime-vitisai build of AMD's Ryzen AI software (AMD NPUs)"),
    "ROCMExecutionProvider": ProviderSource(("onnxruntime-rocm",), "onnxruntime-rocm (AMD GPUs)"),
    "MIGraphXExecutionProvider": ProviderSource(("onnxruntime-migraphx",), "onnxruntime-migraphx (AMD GPUs)"),
}

#: The onnxruntime and onnxruntime-genai flavours `pipeline targets` reports, with what each brings.
RUNTIME_FLAVOURS: tuple[tuple[str, str], ...] = (
    ("onnxruntime", "CPU (and Azure) execution providers"),
    ("onnxruntime-gpu", "CUDA and TensorRT execution providers (NVIDIA GPUs)"),
    ("onnxruntime-openvino", "OpenVINO execution provider (Intel CPU, GPU, NPU)"),
    ("onnxruntime-qnn", "QNN execution provider as a plugin (Qualcomm NPU)"),
    ("onnxruntime-directml", "DirectML execution provider (Windows GPUs and NPUs)"),
)
GENAI_FLAVOURS: tuple[tuple[str, str], ...] = (
    ("onnxruntime-genai", "generation and the model builder on the CPU"),
    ("onnxruntime-genai-cuda", "generation on NVIDIA GPUs"),
    ("onnxruntime-genai-directml", "generation on DirectML (Windows)"),
)


class TargetError(PipelineError):
    """A target cannot run here: none of its providers is available and `fallback` is `error`.

    `message` says what is missing, `hint` how to get it; `str()` is both.
    """

    def __init__(self, message: str, hint: str):
        self.message, self.hint = message, hint
        super().__init__(f"{message}; {hint}")


#: Target fields; `Target` and `StepTarget` share them (a step's target overrides the workflow's).
_DESCRIPTIONS = {
    "device": "The kind of device: cpu, gpu or npu. It picks the default providers and what target-aware passes "
              "choose (quantize's method, optimize_onnx's fp16).",
    "providers": "ONNX Runtime execution providers in order of preference (all are used, the CPU provider last); "
                 "default: the first available of the device's candidates (gpu: CUDA, TensorRT, DirectML; "
                 "npu: QNN, OpenVINO, VitisAI).",
    "provider_options": "Provider name -> its options, passed to the session (e.g. QNNExecutionProvider: "
                        "{backend_path: libQnnHtp.so}).",
    "provider_libraries": "Provider name -> path of a plugin EP shared library to register under that name "
                          "(relative to the workflow file). Plugins with a known package (onnxruntime-qnn) are "
                          "registered by name without this.",
    "fallback": "When a provider is not available: `error` refuses the workflow before anything runs, `cpu` warns "
                "once and runs on the CPU.",
    "threads": "Intra-op threads for ONNX Runtime sessions; default: all cores.",
    "isa": "The CPU instruction set cpu-target passes build for (int8 weight range, fusions, int4 kernels): "
           "`auto` is the CPU of the machine that runs the step; name one (avx2, avx512_vnni, arm64, ...) to build "
           "for a different deployment machine. The resolved ISA is part of those steps' cache keys.",
}
_STRICT = ConfigDict(extra="forbid", validate_default=True, frozen=True, defer_build=True)  # as StrictModel (base.py imports us)


class Target(BaseModel):
    """Where models are evaluated and what they are optimized for."""

    model_config = _STRICT

    device: Device = Field("cpu", description=_DESCRIPTIONS["device"])
    providers: list[str] | None = Field(None, min_length=1, description=_DESCRIPTIONS["providers"])
    provider_options: dict[str, dict[str, OptionValue]] = Field(default_factory=dict, description=_DESCRIPTIONS["provider_options"])
    provider_libraries: dict[str, str] = Field(default_factory=dict, description=_DESCRIPTIONS["provider_libraries"])
    fallback: Literal["error", "cpu"] = Field("error", description=_DESCRIPTIONS["fallback"])
    threads: int | None = Field(None, ge=1, le=256, description=_DESCRIPTIONS["threads"])
    isa: CpuIsa = Field("auto", description=_DESCRIPTIONS["isa"])

    @model_validator(mode="after")
    def _check(self) -> "Target":
        if self.providers is not None:
            if any(not p.strip() for p in self.providers):
                raise ValueError("`providers` holds an empty name")
            dup = sorted({p for p in self.providers if self.providers.count(p) > 1})
            if dup:
                raise ValueError(f"`providers` names {', '.join(dup)} twice")
        known = set(self.resolved_providers()) | {CPU}
        for field in ("provider_options", "provider_libraries"):
            stray = sorted(set(getattr(self, field)) - known)
            if stray:
                raise ValueError(
                    f"`{field}` names {', '.join(stray)}, which this target does not use (it uses "
                    f"{', '.join(self.resolved_providers())}); add it to `providers` or remove the entry")
        return self

    def resolved_providers(self) -> list[str]:
        """The providers asked for: `providers`, else the device's candidates (in order of preference)."""
        return list(self.providers or DEFAULT_PROVIDERS[self.device])

    def planned_provider(self) -> str:
        """The provider target-aware passes optimize for: the first named, else the device's first candidate.

        It depends on the configuration only (never on what is installed here), so a pass's choice and
        its cache key agree on every machine.
        """
        return self.resolved_providers()[0]

    def overridden(self, step: "StepTarget | None") -> "Target":
        """This target with a step's `target:` fields replacing its own.

        A step that changes `device` without naming `providers` gets the new device's defaults, not the
        workflow's providers (they were chosen for another device).
        """
        if step is None:
            return self
        changes = step.model_dump(exclude_unset=True)
        if not changes:
            return self
        data = self.model_dump()
        if changes.get("device", self.device) != self.device and "providers" not in changes:
            data["providers"] = None
        data.update(changes)
        return Target.model_validate(data)


class StepTarget(BaseModel):
    """A step's `target:`: the fields given replace the workflow's target for this step only."""

    model_config = _STRICT

    device: Device | None = Field(None, description=_DESCRIPTIONS["device"])
    providers: list[str] | None = Field(None, min_length=1, description=_DESCRIPTIONS["providers"])
    provider_options: dict[str, dict[str, OptionValue]] | None = Field(None, description=_DESCRIPTIONS["provider_options"])
    provider_libraries: dict[str, str] | None = Field(None, description=_DESCRIPTIONS["provider_libraries"])
    fallback: Literal["error", "cpu"] | None = Field(None, description=_DESCRIPTIONS["fallback"])
    threads: int | None = Field(None, ge=1, le=256, description=_DESCRIPTIONS["threads"])
    isa: CpuIsa | None = Field(None, description=_DESCRIPTIONS["isa"])


@dataclass(frozen=True)
class ProviderChoice:
    """The providers a session gets for a target, and what was asked for but is missing here."""

    providers: tuple[str, ...]
    requested: tuple[str, ...]
    missing: tuple[str, ...]
    warning: str | None = None

    @property
    def primary(self) -> str:
        """The provider that takes the graph first (what a step reports it ran on, until a session says)."""
        return self.providers[0]

    @property
    def fell_back(self) -> bool:
        """True when the target's accelerator is missing and the CPU runs instead."""
        return self.warning is not None


def install_hint(provider: str) -> str:
    """How to get a provider: `QNNExecutionProvider is not available: install onnxruntime-qnn (...)`."""
    source = PROVIDER_SOURCES.get(provider)
    how = source.install if source else "an onnxruntime build that has it (or set `provider_libraries` for a plugin EP)"
    return f"{provider} is not available: install {how}"


def select_providers(target: Target, available: Iterable[str]) -> ProviderChoice:
    """The session providers for `target` given the providers `available` here; raise TargetError.

    Named providers: each must be available (fallback `error`), or the missing ones are dropped
    (fallback `cpu`). Device defaults: the first available candidate. The CPU provider always comes
    last, for the operators an accelerator does not take.
    """
    have = list(dict.fromkeys(available))
    requested = target.resolved_providers()
    if target.providers is not None:
        chosen = [p for p in requested if p in have]
        missing = [p for p in requested if p not in have]
    else:
        first = next((p for p in requested if p in have), None)
        chosen = [first] if first else []
        missing = [] if first else requested
    if missing and (target.providers is not None or not chosen) and target.fallback == "error":
        raise TargetError(*_unavailable_message(target, missing, have))
    if CPU not in chosen:
        chosen.append(CPU)
    warning = None
    if missing:
        warning = (f"{', '.join(missing)} not available here (onnxruntime offers {', '.join(have) or 'none'}): "
                   f"running on {', '.join(chosen)} instead (target.fallback: cpu)")
    return ProviderChoice(tuple(chosen), tuple(requested), tuple(missing), warning)


def _unavailable_message(target: Target, missing: list[str], have: list[str]) -> tuple[str, str]:
    if target.providers is None:
        what = f"target device {target.device} needs one of {', '.join(missing)}; none is available here"
    else:
        what = f"target provider(s) {', '.join(missing)} not available here"
    hint = ("; ".join(install_hint(p) for p in missing)
            + "; or set `target.fallback: cpu` to run on the CPU (`pipeline targets` lists what this machine has)")
    return f"{what} (onnxruntime offers {', '.join(have) or 'none'})", hint


def providers_from_packages(installed: Iterable[str], plugin_providers: Iterable[str] = ()) -> list[str]:
    """The providers the installed distributions bring (names as pip knows them), plus registered plugins."""
    have = {name.lower() for name in installed}
    found = [p for p, src in PROVIDER_SOURCES.items()
             if any(pkg in have for pkg in src.packages) or (src.plugin and src.plugin[0] in have)]
    return found + [p for p in plugin_providers if p not in found]
