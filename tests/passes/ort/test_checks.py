"""passes.ort.checks: comparing a rewritten ONNX model's outputs with its input's; NaN and inf fail."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from passes.base import PassError
from passes.ort.checks import compare_outputs


def _graph(path: Path, tail: str | None) -> Path:
    """logits = mean of the token ids per row, then `tail` (Neg + Sqrt: NaN; Reciprocal of 0: inf)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", ["input_ids"], ["ids"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["ids"], ["mean" if tail else "logits"], axes=[1], keepdims=1)]
    if tail == "nan":  # sqrt of a negative number
        nodes += [helper.make_node("Neg", ["mean"], ["negative"]), helper.make_node("Sqrt", ["negative"], ["logits"])]
    elif tail == "inf":  # 1 / 0
        nodes += [helper.make_node("Sub", ["mean", "mean"], ["zero"]), helper.make_node("Reciprocal", ["zero"], ["logits"])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in ("input_ids", "attention_mask")]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture
def folder(tmp_path, tiny_bert_dir) -> Path:
    """A folder with the tiny BERT's tokenizer files (what compare_outputs tokenizes the samples with)."""
    for item in tiny_bert_dir.iterdir():
        if item.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy2(item, tmp_path / item.name)
    return tmp_path


def test_same_graph_differs_by_zero(folder):
    src = _graph(folder / "src" / "model.onnx", None)
    check = compare_outputs(folder, src, src, ["logits"])
    assert check["max_abs_diff"] == 0.0 and check["execution"]["provider"] == "CPUExecutionProvider"


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_nan_or_inf_in_an_output_fails_the_check(folder, bad):
    src = _graph(folder / "src" / "model.onnx", None)
    dst = _graph(folder / "dst" / "model.onnx", bad)
    with pytest.raises(PassError, match=rf"the quantized model's output 'logits' holds {'NaN' if bad == 'nan' else 'inf'}"):
        compare_outputs(folder, src, dst, ["logits"])
    with pytest.raises(PassError, match="the input model's output 'logits' holds"):  # a broken input is named as such
        compare_outputs(folder, dst, src, ["logits"], "the optimized model")
