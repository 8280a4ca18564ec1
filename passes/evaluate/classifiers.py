"""The classifiers `evaluate` measures: a Hugging Face model in PyTorch or an ONNX model in onnxruntime.

Both expose the same interface (`encode`, `logits`, `bind`) so quality and latency are measured the same
way; `check_classifier` refuses models whose labels do not match the dataset's, and `quality_metrics`
scores predictions with scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas import Target
from schemas.target import ProviderChoice

from passes.base import Artifact, PassError
from passes.hf.folders import read_config
from passes.hf.loading import load_tokenizer
from passes.ort.sessions import read_session_settings, target_session
from passes.hf.folders import refuse_packed_weights

#: The tokenizer outputs an ONNX encoder graph may declare as inputs.
ONNX_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def quality_metrics(y_true: list[int], y_pred: list[int], n_labels: int, wanted: list[str]) -> dict[str, Any]:
    """sklearn metrics; f1/precision/recall are binary (positive = label id 1) for 2 classes, else macro."""
    from sklearn import metrics as skm

    average = "binary" if n_labels == 2 else "macro"
    scorers = {"f1": skm.f1_score, "precision": skm.precision_score, "recall": skm.recall_score}
    out: dict[str, Any] = {"samples": len(y_true)}
    if "accuracy" in wanted:
        out["accuracy"] = float(skm.accuracy_score(y_true, y_pred))
    for name, scorer in scorers.items():
        if name in wanted:
            kwargs = {"pos_label": 1} if average == "binary" else {"labels": list(range(n_labels))}
            out[name] = float(scorer(y_true, y_pred, average=average, zero_division=0, **kwargs))
    if "confusion_matrix" in wanted:
        out["confusion_matrix"] = skm.confusion_matrix(y_true, y_pred, labels=list(range(n_labels))).tolist()
    return out


class Classifier:
    """A loaded sequence classifier: its tokenizer, a batch `logits` function and a timing callable."""

    #: Session settings a `tune_session` step chose (session_options.json), applied when loading; None: none.
    settings: dict[str, Any] | None = None

    def __init__(self, artifact: Artifact, tokenizer: Any, labels: list[str], provider: str, max_positions: int | None):
        self.artifact, self.tokenizer, self.labels = artifact, tokenizer, labels
        self.provider, self.max_positions = provider, max_positions

    def encode(self, texts: list[Any], **kwargs: Any) -> dict[str, Any]:
        """Tokenize texts (strings or (text, text_pair) pairs) to numpy arrays."""
        if texts and isinstance(texts[0], tuple):
            return dict(self.tokenizer([t for t, _ in texts], [p for _, p in texts], return_tensors="np", **kwargs))
        return dict(self.tokenizer(list(texts), return_tensors="np", **kwargs))

    def logits(self, encoded: dict[str, Any]) -> Any:
        """Logits (numpy, batch x labels) for encoded inputs."""
        return self.bind(encoded)()

    def bind(self, encoded: dict[str, Any]) -> Callable[[], Any]:
        """A zero-argument call running the model on these inputs, converted once (what latency times)."""
        raise NotImplementedError


class HfClassifier(Classifier):
    """A Hugging Face `...ForSequenceClassification` in PyTorch: eager, fp32, inference mode."""

    def __init__(self, artifact: Artifact, labels: list[str], device: str):
        import torch
        from transformers import AutoModelForSequenceClassification

        refuse_packed_weights(artifact.path, "evaluate (PyTorch)")
        self.model = AutoModelForSequenceClassification.from_pretrained(artifact.path, dtype=torch.float32)
        self.model.to(device).eval()
        self.device = device
        tokenizer = load_tokenizer(artifact.path)
        super().__init__(artifact, tokenizer, labels, f"torch-{device}", getattr(self.model.config, "max_position_embeddings", None))

    def bind(self, encoded: dict[str, Any]) -> Callable[[], Any]:
        import torch

        tensors = {k: torch.from_numpy(v).to(self.device) for k, v in encoded.items()}
        model, sync = self.model, (torch.cuda.synchronize if self.device == "cuda" else None)

        def call() -> Any:
            with torch.inference_mode():
                logits = model(**tensors).logits
            if sync:
                sync()
            return logits.float().cpu().numpy()

        return call


class OnnxClassifier(Classifier):
    """An ONNX classifier in ONNX Runtime; only the inputs the graph declares are fed."""

    def __init__(self, artifact: Artifact, labels: list[str], target: Target, choice: ProviderChoice, threads: int):
        folder = Path(artifact.path)
        # On the providers `passes.ort.providers.choose` picked for the target, with its provider options, and
        # with the session options `tune_session` chose when the model has them (as its inference.py runs it).
        self.settings = read_session_settings(folder)
        self.session = target_session(folder / "model.onnx", target, choice, threads, settings=self.settings)
        self.inputs = {i.name: i.type for i in self.session.get_inputs()}
        unknown = sorted(set(self.inputs) - set(ONNX_TEXT_INPUTS))
        if unknown:
            raise PassError(f"model {artifact.step!r}: graph inputs {unknown} are not tokenizer outputs ({', '.join(ONNX_TEXT_INPUTS)}); export it as a text classifier")
        outputs = [o.name for o in self.session.get_outputs()]
        self.output = "logits" if "logits" in outputs else outputs[0]
        config = read_config(folder)
        super().__init__(artifact, load_tokenizer(folder), labels, self.session.get_providers()[0], config.get("max_position_embeddings"))

    def bind(self, encoded: dict[str, Any]) -> Callable[[], Any]:
        import numpy as np

        feeds = {}
        for name, onnx_type in self.inputs.items():
            dtype = np.int32 if onnx_type == "tensor(int32)" else np.int64
            value = encoded.get(name)
            if value is None:  # a graph with token_type_ids fed by a tokenizer without them
                value = np.zeros_like(encoded["input_ids"])
            feeds[name] = np.ascontiguousarray(value, dtype=dtype)
        session, output = self.session, [self.output]
        return lambda: session.run(output, feeds)[0]


def _model_labels(artifact: Artifact) -> list[str] | None:
    labels = artifact.meta.get("labels")
    if labels is None:
        id2label = read_config(artifact.path).get("id2label") or {}
        labels = [id2label[k] for k in sorted(id2label, key=int)] or None
    return list(labels) if labels is not None else None


def check_classifier(artifact: Artifact, data: Artifact, data_labels: list[str]) -> list[str]:
    """The model's label names, after checking it is a classifier for exactly the dataset's labels."""
    task = artifact.meta.get("task")
    if task is None:
        archs = read_config(artifact.path).get("architectures") or []
        task = "text-classification" if any(a.endswith("ForSequenceClassification") for a in archs) else "feature-extraction"
    if task == "feature-extraction":
        raise PassError(
            f"model {artifact.step!r} has no classification head (task feature-extraction): cannot classify: "
            f"fine-tune it first (lora/finetune) on {data.step!r}, then evaluate the tuned (merged or exported) model"
        )
    if task != "text-classification":
        raise PassError(f"model {artifact.step!r} has task {task!r}; evaluate measures text-classification models")
    labels = _model_labels(artifact)
    if labels != data_labels:
        raise PassError(
            f"model {artifact.step!r} predicts labels {labels} but dataset {data.step!r} has labels {data_labels}; "
            f"evaluate a model fine-tuned on this dataset (same label names in the same order)"
        )
    return labels


def execution_record(classifiers: dict[str, Classifier], target: Target, threads: int) -> dict[str, Any] | None:
    """Where the ONNX models ran, read from their sessions (None when only PyTorch models were evaluated)."""
    sessions = [c.session for c in classifiers.values() if isinstance(c, OnnxClassifier)]
    if not sessions:
        return None
    used = list(sessions[0].get_providers())
    return {"provider": used[0], "providers": used, "requested": target.resolved_providers(),
            "threads": threads, "models": {n: c.provider for n, c in classifiers.items()}}
