"""The built-in step configs; importing this package registers them."""

from .data import LoadDataConfig
from .evaluate import EvaluateConfig
from .model import ModelConfig
from .olive import OliveConfig
from .select import SelectConfig
from .prune import PruneConfig
from .onnx import ExportOnnxConfig, OptimizeOnnxConfig, QuantizeConfig, QuantPlan
from .tune import TuneSessionConfig
from .train import FinetuneConfig, LoraConfig, MergeAdapterConfig, QloraConfig, TrainingSettings, TuneScalesConfig

__all__ = [
    "EvaluateConfig",
    "ExportOnnxConfig",
    "FinetuneConfig",
    "LoadDataConfig",
    "LoraConfig",
    "MergeAdapterConfig",
    "ModelConfig",
    "OliveConfig",
    "OptimizeOnnxConfig",
    "PruneConfig",
    "QloraConfig",
    "QuantizeConfig",
    "QuantPlan",
    "SelectConfig",
    "TrainingSettings",
    "TuneScalesConfig",
    "TuneSessionConfig",
]
