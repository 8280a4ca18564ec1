"""Static int8 quantization for `quantize`: calibration data from a dataset artifact, then QDQ.

The calibration set is `calibration_samples` rows of the dataset's `split` (shuffled with a fixed
seed), tokenized with the model's own tokenizer. MinMax calibration sees each text unpadded, one at a
time; entropy and percentile build one histogram per tensor, which needs every batch to have the same
shape, so their inputs are padded to one fixed length (the longest calibration text) and fed in
batches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas.steps import QuantizeConfig, QuantPlan

from passes.hf.loading import load_tokenizer
from passes.ort import files
from passes.ort.sessions import encode
from passes.base import Artifact, PassError, Progress, StepContext

#: What static_int8 quantizes unless `op_types` says otherwise: the weight-bearing ops of a transformer.
#: Quantizing everything (onnxruntime's default) also puts QDQ on the attention-mask Add and Softmax,
#: whose float32-min mask values overflow the entropy/percentile histograms, cost accuracy and add
#: Q/DQ pairs onnxruntime cannot fuse.
DEFAULT_STATIC_OP_TYPES = ("MatMul", "Gemm", "Gather")
#: Op types NPU profiles leave alone: casts (onnxruntime's QNN config excludes them too) and QDQ itself.
NOT_QUANTIZED_OP_TYPES = frozenset({"Cast", "QuantizeLinear", "DequantizeLinear"})
#: Rows per calibration batch when inputs are padded to one length (entropy, percentile).
FIXED_LENGTH_BATCH = 8


class FeedReader:
    """An onnxruntime `CalibrationDataReader` over prepared input feeds that advances a progress bar."""

    def __init__(self, feeds: list[dict[str, Any]], bar: Progress | None = None):
        self.feeds, self.bar, self.position = feeds, bar, 0

    def get_next(self) -> dict[str, Any] | None:
        """The next feed, or None when the calibration set is exhausted."""
        if self.position >= len(self.feeds):
            return None
        feed = self.feeds[self.position]
        self.position += 1
        if self.bar is not None:
            self.bar.advance(len(next(iter(feed.values()))))
        return feed

    def rewind(self) -> None:
        """Start over (a calibrator may read the set more than once)."""
        self.position = 0

    def __iter__(self) -> "FeedReader":
        return self

    def __next__(self) -> dict[str, Any]:
        feed = self.get_next()
        if feed is None:
            raise StopIteration
        return feed

    def __len__(self) -> int:
        return len(self.feeds)


def calibration_texts(data: Artifact, split: str, n: int) -> list[Any]:
    """Up to `n` texts (or (text, text_pair) tuples) from `split` of a dataset artifact, shuffled with seed 0."""
    import datasets

    root = data.path / "data"
    try:
        names = json.loads((root / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError) as exc:
        raise PassError(f"step {data.step!r} is not a dataset saved by load_data ({root} has no dataset_dict.json)") from exc
    if split not in names:
        raise PassError(f"dataset step {data.step!r} has no {split!r} split (it has {', '.join(names)}); set `split`")
    try:
        # Only the split we need (each split is its own saved Dataset in the DatasetDict's folder).
        rows = datasets.load_from_disk(str(root / split))
    except IndexError:
        rows = None  # datasets cannot load a split that was saved with no rows (zero shards)
    if rows is not None and "text" not in rows.column_names:
        raise PassError(
            f"static_int8 calibrates on a `text` column; the {split!r} split of {data.step!r} has "
            f"{', '.join(rows.column_names)} (use classification data, or dynamic_int8 which needs no data)"
        )
    if rows is None or len(rows) == 0:
        raise PassError(
            f"the {split!r} split of {data.step!r} is empty: static_int8 has nothing to calibrate on; "
            "choose another `split` or use dynamic_int8"
        )
    # in memory: by default `shuffle` writes its indices file next to the dataset, inside the input's cache
    # entry, which the next step then finds damaged (an unexpected file) and rebuilds
    rows = rows.shuffle(seed=0, keep_in_memory=True).select(range(min(n, len(rows))), keep_in_memory=True)
    texts = rows["text"]
    pairs = rows["text_pair"] if "text_pair" in rows.column_names else [None] * len(texts)
    chosen = [t if p is None else (t, p) for t, p in zip(texts, pairs) if isinstance(t, str) and t.strip()]
    if not chosen:
        raise PassError(f"the {split!r} split of {data.step!r} has only empty texts: nothing to calibrate on")
    return chosen


def calibration_feeds(tokenizer: Any, inputs: list[tuple[str, str]], texts: list[Any], fixed_length: bool) -> list[dict[str, Any]]:
    """Model inputs for calibration: one unpadded text per feed, or fixed-length padded batches."""
    limit = _max_length(tokenizer)
    single = [encode(tokenizer, inputs, [t], padding=False, max_length=limit) for t in texts]
    if not fixed_length:
        return single
    length = max(feed["input_ids"].shape[1] for feed in single)
    return [
        encode(tokenizer, inputs, texts[i:i + FIXED_LENGTH_BATCH], padding="max_length", max_length=length)
        for i in range(0, len(texts), FIXED_LENGTH_BATCH)
    ]


def _max_length(tokenizer: Any) -> int:
    n = getattr(tokenizer, "model_max_length", None)
    return int(n) if isinstance(n, int) and 0 < n < 1_000_000 else 512


def static_int8(cfg: QuantizeConfig, plan: QuantPlan, src: Path, dst: Path, excluded: list[str], external: bool,
                data: Artifact, ctx: StepContext) -> None:
    """Calibrate on `data` and write a QDQ model: `plan.activation_type` activations, `weight_type` weights.

    uint8 activations with int8 weights is the x86 fast path (VNNI); int8 activations ran 3.8x slower
    on MiniLM here. The `cpu` profile quantizes the weight-bearing ops only; NPU profiles quantize every
    op the QDQ quantizer knows (an NPU runs integer graphs), `qnn` through onnxruntime's QNN config
    (its per-op overrides, e.g. fixed output ranges of Sigmoid and Tanh, and 16-bit conversions).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize, quantize_static
    texts = calibration_texts(data, cfg.split, cfg.calibration_samples)
    tokenizer = load_tokenizer(src.parent)
    fixed = cfg.calibration in ("entropy", "percentile")
    feeds = calibration_feeds(tokenizer, files.graph_inputs(src), texts, fixed)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.calibration]
    activation = QuantType.QUInt16 if plan.activation_type == "uint16" else QuantType.QUInt8
    weight = QuantType.QInt8 if cfg.weight_type == "qint8" else QuantType.QUInt8
    if cfg.op_types:
        op_types = list(cfg.op_types)
    elif plan.profile == "cpu":
        op_types = list(DEFAULT_STATIC_OP_TYPES)
    else:  # every op type of the graph, as onnxruntime's QNN config does: the quantizer wraps their float tensors
        op_types = sorted(set(files.op_counts(src)) - NOT_QUANTIZED_OP_TYPES)
    ctx.log(f"calibrating ({cfg.calibration}) on {len(texts)} texts of {data.step!r}/{cfg.split}"
            + (f", padded to {next(iter(feeds[0].values())).shape[1]} tokens" if fixed else ""))
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    with ctx.progress(len(texts), f"calibrating ({cfg.calibration})") as bar:
        reader = FeedReader(feeds, bar)
        if plan.profile == "qnn":
            from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

            config = get_qnn_qdq_config(src, reader, calibrate_method=method, activation_type=activation,
                                        weight_type=weight, per_channel=cfg.per_channel, op_types_to_quantize=op_types,
                                        nodes_to_exclude=excluded or None)
            config.use_external_data_format = external
            config.extra_options.update(extra)
            quantize(src, dst, config)
            return
        quantize_static(
            src, dst, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types,
            per_channel=cfg.per_channel, activation_type=activation, weight_type=weight,
            nodes_to_exclude=excluded, use_external_data_format=external, calibrate_method=method,
            extra_options=extra,
        )
