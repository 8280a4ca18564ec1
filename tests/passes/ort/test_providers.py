"""Provider selection with the list of available providers faked (CUDA present / absent, QNN as a plugin,
fallback error vs cpu), the quantization each target picks, and sessions on the CPU provider."""

from __future__ import annotations

import pytest

from schemas import Target
from schemas.target import CPU, StepTarget, TargetError, providers_from_packages, select_providers

BASE = [CPU, "AzureExecutionProvider"]
CUDA_BOX = ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]
QNN = "QNNExecutionProvider"


def test_cpu_target_uses_the_cpu_provider():
    choice = select_providers(Target(), BASE)
    assert choice.providers == (CPU,) and choice.primary == CPU and not choice.missing and not choice.fell_back


def test_gpu_with_cuda_present_picks_cuda_first_then_cpu():
    choice = select_providers(Target(device="gpu"), CUDA_BOX)
    # CUDA is the first candidate even though onnxruntime lists TensorRT first.
    assert choice.providers == ("CUDAExecutionProvider", CPU)
    assert choice.requested == ("CUDAExecutionProvider", "TensorrtExecutionProvider", "DmlExecutionProvider")


def test_gpu_falls_to_the_next_candidate_when_installed():
    assert select_providers(Target(device="gpu"), ["DmlExecutionProvider", CPU]).providers == ("DmlExecutionProvider", CPU)


def test_gpu_with_cuda_absent_fallback_error_names_what_to_install():
    with pytest.raises(TargetError) as info:
        select_providers(Target(device="gpu"), BASE)
    err = info.value
    assert err.message == ("target device gpu needs one of CUDAExecutionProvider, TensorrtExecutionProvider, "
                           "DmlExecutionProvider; none is available here (onnxruntime offers CPUExecutionProvider, "
                           "AzureExecutionProvider)")
    assert "CUDAExecutionProvider is not available: install onnxruntime-gpu" in err.hint
    assert "DmlExecutionProvider is not available: install onnxruntime-directml (Windows only)" in err.hint
    assert "set `target.fallback: cpu`" in err.hint and "pipeline targets" in err.hint
    assert str(err) == f"{err.message}; {err.hint}"


def test_gpu_with_cuda_absent_fallback_cpu_warns_and_runs_on_cpu():
    choice = select_providers(Target(device="gpu", fallback="cpu"), BASE)
    assert choice.providers == (CPU,) and choice.fell_back
    assert choice.missing == ("CUDAExecutionProvider", "TensorrtExecutionProvider", "DmlExecutionProvider")
    assert choice.warning.endswith("running on CPUExecutionProvider instead (target.fallback: cpu)")


def test_named_providers_must_all_be_there_or_fall_back():
    target = Target(device="gpu", providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    assert select_providers(target, CUDA_BOX).providers == ("TensorrtExecutionProvider", "CUDAExecutionProvider", CPU)
    with pytest.raises(TargetError, match=r"^target provider\(s\) TensorrtExecutionProvider not available here"):
        select_providers(target, ["CUDAExecutionProvider", CPU])
    relaxed = Target(device="gpu", providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"], fallback="cpu")
    choice = select_providers(relaxed, ["CUDAExecutionProvider", CPU])
    assert choice.providers == ("CUDAExecutionProvider", CPU) and choice.missing == ("TensorrtExecutionProvider",)


def test_qnn_as_a_plugin():
    # onnxruntime-qnn is a plugin package: validation sees the distribution, the passes its registered EP.
    assert QNN in providers_from_packages({"onnxruntime", "onnxruntime-qnn"})
    assert QNN not in providers_from_packages({"onnxruntime"})
    assert providers_from_packages({"onnxruntime"}, [QNN])[-1] == QNN  # a library path in provider_libraries
    choice = select_providers(Target(device="npu"), [*BASE, QNN])
    assert choice.providers == (QNN, CPU)
    with pytest.raises(TargetError) as info:
        select_providers(Target(device="npu"), BASE)
    assert "QNNExecutionProvider is not available: install onnxruntime-qnn" in info.value.hint
    assert "OpenVINOExecutionProvider is not available: install onnxruntime-openvino" in info.value.hint
    assert select_providers(Target(device="npu", fallback="cpu"), BASE).providers == (CPU,)


def test_unknown_provider_gets_a_generic_hint():
    with pytest.raises(TargetError) as info:
        select_providers(Target(providers=["ContosoExecutionProvider"]), BASE)
    assert "ContosoExecutionProvider is not available: install an onnxruntime build that has it" in info.value.hint


def test_target_validation():
    with pytest.raises(ValueError, match="names CPUExecutionProvider twice"):
        Target(providers=[CPU, CPU])
    with pytest.raises(ValueError, match=r"`provider_options` names CUDAExecutionProvider, which this target does not use"):
        Target(provider_options={"CUDAExecutionProvider": {"device_id": 0}})
    ok = Target(device="npu", provider_options={QNN: {"backend_path": "libQnnHtp.so"}})
    assert ok.planned_provider() == QNN


def test_step_override():
    workflow = Target(device="cpu", threads=2, fallback="cpu")
    assert workflow.overridden(None) is workflow
    step = workflow.overridden(StepTarget(device="gpu"))
    # a new device without providers takes that device's defaults; the other fields stay the workflow's
    assert step.device == "gpu" and step.providers is None and step.threads == 2 and step.fallback == "cpu"
    named = Target(providers=[CPU]).overridden(StepTarget(device="npu"))
    assert named.providers is None and named.resolved_providers()[0] == QNN
    assert Target(providers=[CPU]).overridden(StepTarget(threads=1)).providers == [CPU]


def test_sessions_on_the_cpu_provider_record_what_ran(tmp_path, make_ctx):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from passes.ort import providers, sessions

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "model.onnx"))
    target = Target(device="gpu", fallback="cpu", threads=1, provider_options={"CUDAExecutionProvider": {"device_id": 0}})
    lines: list[str] = []
    choice = providers.choose(target, tmp_path, lines.append)
    assert choice.providers == (CPU,) and choice.fell_back  # no GPU on this machine
    session = sessions.target_session(tmp_path / "model.onnx", target, choice)
    assert session.run(None, {"x": np.array([-1.0, 2.0], dtype=np.float32)})[0].tolist() == [0.0, 2.0]
    record = providers.session_record(session, choice)
    assert record["provider"] == CPU and record["fell_back"] and "CUDAExecutionProvider" in record["missing"]
    assert providers.provider_options_for(Target(device="npu", provider_options={QNN: {"htp_graph_finalization_optimization_mode": 3, "x": True}}),
                                           [QNN, CPU]) == [{"htp_graph_finalization_optimization_mode": "3", "x": "1"}, {}]
    from passes.base import PassError

    with pytest.raises(PassError, match="none is available here"):
        providers.choose(Target(device="gpu"), tmp_path)
    with pytest.raises(PassError, match="provider_libraries.QNNExecutionProvider: no such file"):
        providers.register_plugins(Target(device="npu", provider_libraries={QNN: "nope.so"}), tmp_path)


def test_choose_keeps_installed_providers_and_logs_the_fallback_once(monkeypatch):
    from passes.ort import providers

    monkeypatch.setattr(providers, "available_providers", lambda: ["AzureExecutionProvider", CPU])
    lines: list[str] = []
    target = Target(providers=["OpenVINOExecutionProvider", "AzureExecutionProvider"], fallback="cpu")
    assert providers.choose(target, log=lines.append).providers == ("AzureExecutionProvider", CPU)
    assert len(lines) == 1 and "OpenVINOExecutionProvider not installed" in lines[0]
    assert providers.choose(Target(), log=lines.append).providers == (CPU,)
    assert len(lines) == 1
