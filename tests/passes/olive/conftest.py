"""TEMPORARY (delete at merge): a stand-in for Developer E's `schemas.steps.olive.OliveConfig`.

The olive pass imports `from schemas.steps.olive import OliveConfig`; until E's module is merged this
conftest registers an equivalent config class (the shared interface's fields) under sys.modules.
When the real module exists it is used and nothing here is installed.
"""

from __future__ import annotations

import sys
import types
from typing import Any, ClassVar, Literal

try:  # the real contract, once merged
    import schemas.steps.olive  # noqa: F401
except ImportError:
    from pydantic import ConfigDict, Field

    from schemas.base import Dataset, HfModel, OnnxModel, Ref, StepConfig
    from schemas.registry import register_step

    @register_step
    class OliveConfig(StepConfig):
        """TEMPORARY stand-in: run one Olive pass (olive-ai 0.13) on an artifact of this workflow."""

        model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True, populate_by_name=True)
        type: Literal["olive"] = Field(description="Run one Olive pass.")
        pass_name: str = Field(alias="pass", description="An Olive pass name.")
        model: Ref[HfModel, OnnxModel] = Field(description="The model step the pass takes.")
        data: Ref[Dataset] | None = Field(None, description="A load_data step.")
        split: Literal["train", "validation", "test"] = Field("train", description="The split.")
        samples: int = Field(128, ge=1, description="At most this many rows.")
        config: dict[str, Any] = Field(default_factory=dict, description="The pass's parameters.")
        output_kind: ClassVar[str] = "onnx_model"
        uses_target: ClassVar[bool] = True

        def produced_kind(self) -> str:
            """hf_model for PyTorch -> PyTorch passes, else onnx_model (the manifest decides in E's version)."""
            return "hf_model" if self.pass_name in {"Rtn", "Gptq", "Awq", "QuaRot", "SpinQuant",
                                                    "MergeAdapterWeights", "KQuant", "SliceGPT"} else "onnx_model"

    module = types.ModuleType("schemas.steps.olive")
    module.OliveConfig = OliveConfig
    sys.modules["schemas.steps.olive"] = module
