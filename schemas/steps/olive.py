"""`olive`: any pass of olive-ai 0.13 as a step, checked against the committed manifest of Olive's passes.

Olive itself warns about an unknown pass parameter and drops it; here an unknown pass, an unknown
parameter, a value of the wrong type or outside the pass's choices, a missing required parameter, and a
pass that needs data without `data` are errors at their place in the file. The manifest is JSON
(`schemas.olive_manifest`): nothing here imports Olive.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from ..base import Dataset, HfModel, OnnxModel, Ref, StepConfig
from ..target import IsaName
from ..olive_manifest import canonical_pass_name, data_params, olive_pass, olive_passes, takes_data, value_problem
from ..registry import register_step
from ..suggest import did_you_mean

_LISTING = "`pipeline passes olive` lists Olive's passes"


def _error(kind: str, message: str, hint: str | None = None, at_key: bool = False) -> PydanticCustomError:
    """An error whose context carries the hint (and whether to point at the key) for pipelines.validate."""
    return PydanticCustomError(kind, message, {"hint": hint, "at_key": at_key})  # type: ignore[arg-type]


@register_step
class OliveConfig(StepConfig):
    """Run one Olive pass (olive-ai 0.13) on an artifact of this workflow."""

    model_config = ConfigDict(populate_by_name=True)

    type: Literal["olive"] = Field(description="An Olive pass (olive-ai 0.13) run as a step.")
    pass_name: str = Field(
        alias="pass", description="An Olive pass name from Olive's registry, e.g. Gptq, OnnxStaticQuantization."
    )
    model: Ref[HfModel, OnnxModel] = Field(description="The model step the pass takes.")
    data: Ref[Dataset] | None = Field(None, description="A load_data step, for passes that calibrate or train.")
    split: Literal["train", "validation", "test"] = Field("train", description="The split Olive's data config reads.")
    samples: int = Field(128, ge=1, description="At most this many rows are given to the pass (calibration/training).")
    config: dict[str, Any] = Field(
        default_factory=dict, description="The pass's parameters (checked against the manifest)."
    )
    config_by_isa: dict[IsaName, dict[str, Any]] = Field(
        default_factory=dict,
        description="Parameters over `config` when the step builds for a cpu target of that instruction set "
                    "(`target.isa`, detected by default), e.g. the GPTQ block format the CPU's int4 kernel runs fastest: "
                    "`{avx512_vnni: {group_size: 64, sym: false}}`. The instruction set is then part of the cache key.")

    output_kind: ClassVar[str] = "onnx_model"  # the class's default; an instance produces what its pass produces
    uses_target: ClassVar[bool] = True
    key_omit_when_empty: ClassVar[frozenset[str]] = frozenset({"config_by_isa"})

    @property
    def uses_isa(self) -> bool:  # type: ignore[override]
        """Only a step with per-ISA parameters depends on the CPU (other Olive steps keep their keys)."""
        return bool(self.config_by_isa)

    def config_for(self, isa: str | None) -> dict[str, Any]:
        """The pass's parameters on `isa` (None: not a cpu build): `config`, then that ISA's `config_by_isa`."""
        return {**self.config, **(self.config_by_isa.get(isa, {}) if isa else {})}  # type: ignore[call-overload]

    def produced_kind(self) -> str:
        """The kind this step produces: its pass's (hf_model for Gptq/Awq/QuaRot/LoRA, onnx_model for ONNX passes)."""
        entry = olive_pass(self.pass_name)
        return entry["produces"] if entry and entry["produces"] else self.output_kind

    def reference_kinds(self, field: str) -> tuple[str, ...]:
        """`model` takes what the pass takes (Gptq: an hf_model; OnnxStaticQuantization: an onnx_model)."""
        entry = olive_pass(self.pass_name)
        if field == "model" and entry and entry["accepts"]:
            return tuple(entry["accepts"])
        return super().reference_kinds(field)

    @field_validator("pass_name")
    @classmethod
    def _known_pass(cls, name: str) -> str:
        entry = olive_pass(name)
        if entry is None:
            canonical = canonical_pass_name(name)
            hint = f"did you mean {canonical!r}? (pass names are case-sensitive here)" if canonical \
                else did_you_mean(name, olive_passes()) or _LISTING
            raise _error("olive_pass", f"unknown Olive pass {name!r}", hint)
        if not entry["accepts"] or not entry["produces"]:
            raise _error("olive_pass", f"Olive pass {name} works on {_handlers(entry)}, which no step of this tool "
                         "produces or takes (its artifacts are Hugging Face folders and ONNX models)", _LISTING)
        return name

    @field_validator("data")
    @classmethod
    def _data_as_the_pass_needs(cls, data: str | None, info: ValidationInfo) -> str | None:
        entry = olive_pass(info.data.get("pass_name", ""))
        if entry is None:
            return data  # the unknown pass is the error
        if data is None and entry["needs_data"]:
            raise _error("olive_data", f"Olive pass {entry['name']} needs data ({', '.join(data_params(entry))})",
                         "add `data: <a load_data step>` to this step")
        if data is not None and not takes_data(entry):
            raise _error("olive_data", f"Olive pass {entry['name']} takes no data", "remove `data` from this step")
        return data

    @field_validator("config")
    @classmethod
    def _config_as_the_manifest_says(cls, config: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        entry = olive_pass(info.data.get("pass_name", ""))
        if entry is None:
            return config
        _raise_problems("OliveConfig.config", _param_problems(entry, config, ()) + _missing(entry, config))
        return config

    @field_validator("config_by_isa")
    @classmethod
    def _isa_configs_as_the_manifest_says(cls, by_isa: dict[str, dict[str, Any]],
                                          info: ValidationInfo) -> dict[str, dict[str, Any]]:
        entry = olive_pass(info.data.get("pass_name", ""))
        if entry is None:
            return by_isa
        _raise_problems("OliveConfig.config_by_isa",
                        [p for isa, config in by_isa.items() for p in _param_problems(entry, config, (isa,))])
        return by_isa


def _param_problems(entry: dict, config: dict[str, Any], at: tuple) -> list[tuple]:
    """(location, error, value) for each key of `config` the pass does not take or a value it refuses."""
    params, name, problems = entry["params"], entry["name"], []
    for key, value in config.items():
        param = params.get(key)
        if str(key).endswith("data_config"):
            problems.append(((*at, key), _error("olive_param", f"{key} is built from the step's `data` and `split`",
                                                "set `data: <a load_data step>` on the step instead", at_key=True), value))
        elif param is None:
            hint = did_you_mean(str(key), params) or f"`pipeline passes olive/{name}` lists its parameters"
            problems.append(((*at, key), _error("olive_param", f"unknown parameter {key!r} of Olive pass {name}",
                                                hint, at_key=True), value))
        elif (problem := value_problem(param, value)) is not None:
            problems.append(((*at, key), _error("olive_value", problem, param["description"] or None), value))
    return problems


def _missing(entry: dict, config: dict[str, Any]) -> list[tuple]:
    """(location, error, value) for each required parameter `config` leaves out."""
    return [((), _error("olive_param", f"missing required parameter {key!r} of Olive pass {entry['name']}",
                        param["description"] or None), config)
            for key, param in entry["params"].items()
            if param["required"] and key not in config and key not in data_params(entry)]


def _raise_problems(title: str, problems: list[tuple]) -> None:
    if problems:
        raise ValidationError.from_exception_data(
            title, [InitErrorDetails(type=err, loc=loc, input=value) for loc, err, value in problems])


def _handlers(entry: dict) -> str:
    takes = " or ".join(entry.get("olive_takes") or ["?"])
    returns = " or ".join(entry.get("olive_returns") or ["?"])
    return f"{takes} -> {returns}"
