"""Targets end to end: validation before anything runs, per-step overrides, what is keyed, `pipeline
targets`, run.json's record of the provider each step really used, and the npu QDQ model."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from passes.ort.isa import detect_isa, fuse_skip_layer_norm
from pipelines.validate import load_workflow
from runner.keys import key_parts
from schemas import Target
from schemas.errors import ConfigError
from schemas.steps import EvaluateConfig, QuantizeConfig
from schemas.target import StepTarget
from tests.helpers import cli, fake_project, write


def issues(wf):
    with pytest.raises(ConfigError) as info:
        load_workflow(wf)
    return [i.format() for i in info.value.issues]


def test_unavailable_gpu_is_refused_before_anything_runs(tmp_path, capsys):
    wf = fake_project(tmp_path)
    wf.write_text(wf.read_text().replace("steps:", "target: {device: gpu}\nsteps:", 1))
    (msg,) = issues(wf)
    assert msg.startswith(f"{wf}:4:18: target.device: target device gpu needs one of CUDAExecutionProvider, "
                          "TensorrtExecutionProvider, DmlExecutionProvider; none is available here")
    assert "hint: CUDAExecutionProvider is not available: install onnxruntime-gpu" in msg
    assert cli("run", wf, "--cache-dir", tmp_path / "c", "--output", tmp_path / "out") == 2
    assert "nothing was run" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_fallback_cpu_warns_once_for_every_step_that_shares_the_target(tmp_path):
    wf = fake_project(tmp_path)
    text = wf.read_text().replace("steps:", "target: {device: npu, fallback: cpu}\nsteps:", 1)
    text = text.replace('suffix: "?"}', 'suffix: "?", target: {threads: 1}}')  # another target: its own warning
    wf.write_text(text.replace('suffix: "!"}', 'suffix: "!", target: {threads: 1}}'))
    warnings = load_workflow(wf).warnings
    assert [w.path for w in warnings] == [("target",)]  # the step targets differ only in threads: same message
    assert "running on CPUExecutionProvider instead (target.fallback: cpu)" in warnings[0].message


def test_step_target_errors_point_at_the_step(tmp_path):
    wf = fake_project(tmp_path)
    wf.write_text(wf.read_text().replace('suffix: "?"}', 'suffix: "?", target: {device: gpu}}'))
    (msg,) = issues(wf)
    assert msg.startswith(f"{wf}:6:") and "steps.a.target.device: target device gpu needs one of" in msg
    wf.write_text(fake_project(tmp_path).read_text().replace(
        'suffix: "?"}', 'suffix: "?", target: {provider_options: {CUDAExecutionProvider: {device_id: 0}}}}'))
    (msg,) = issues(wf)
    assert "steps.a.target: with the workflow's target: `provider_options` names CUDAExecutionProvider" in msg
    wf.write_text(fake_project(tmp_path).read_text().replace('suffix: "?"}', 'suffix: "?", target: {devise: gpu}}'))
    assert "steps.a.target.devise: unknown field 'devise'" in issues(wf)[0]


def test_npu_quantize_without_data_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    wf = write(tmp_path, """
        version: 1
        name: t
        target: {device: npu, fallback: cpu}
        steps:
          base: {type: model, path: m}
          onnx: {type: export_onnx, model: base}
          q: {type: quantize, model: onnx}
    """)
    (msg,) = issues(wf)
    assert "steps.q.data: on an npu target quantize defaults to static QDQ, which is calibrated on data" in msg
    wf.write_text(wf.read_text().replace("q: {type: quantize, model: onnx}", "q: {type: quantize, model: onnx, method: int4}"))
    load_workflow(wf)


def test_the_target_is_keyed_only_where_the_result_depends_on_it():
    def key(cfg, target):
        return key_parts(cfg, 1, (), {}, {}, target).key

    cpu, npu = Target(), Target(device="npu", fallback="cpu")
    auto = QuantizeConfig(type="quantize", model="m", data="d")
    fixed = QuantizeConfig(type="quantize", model="m", method="int4")
    assert key(auto, cpu) != key(auto, npu)
    assert key(fixed, cpu) == key(fixed, npu)
    # A step's own `target:` enters as the effective target, never as config (no key change of its own).
    overridden = QuantizeConfig(type="quantize", model="m", method="int4", target=StepTarget(device="npu"))
    assert key(overridden, cpu) == key(fixed, cpu)
    ev = EvaluateConfig(type="evaluate", models=["m"], data="d")
    assert key(ev, cpu) != key(ev, Target(threads=1))


def test_pipeline_targets_lists_providers_and_flavours(tmp_path, capsys):
    assert cli("targets", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"name": "CPUExecutionProvider", "kind": "built-in"} in doc["providers"]
    flavours = {f["package"]: f for f in doc["flavours"]}
    assert set(flavours) >= {"onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-qnn",
                             "onnxruntime-directml", "onnxruntime-genai"}
    assert flavours["onnxruntime"]["version"] and flavours["onnxruntime-gpu"]["install"] == "pip install onnxruntime-gpu"
    assert any(m["name"] == "QNNExecutionProvider" and "onnxruntime-qnn" in m["install"] for m in doc["missing"])
    wf = fake_project(tmp_path)
    wf.write_text(wf.read_text().replace("steps:", "target: {device: gpu}\nsteps:", 1))
    assert cli("targets", wf) == 0
    text = capsys.readouterr().out
    assert "not available here:" in text and "target: gpu" in text and "cannot run: target device gpu needs one of" in text


def test_run_records_the_provider_each_step_used_and_what_passes_chose(tmp_path, tiny_bert_classifier_dir, tiny_csv):
    wf = write(tmp_path, f"""
        version: 1
        name: targets
        target: {{device: cpu, threads: 1}}
        steps:
          base: {{type: model, path: {tiny_bert_classifier_dir}, task: text-classification}}
          data: {{type: load_data, path: {tiny_csv}, text: text, label: label, splits: {{train: 0.6, validation: 0.2, test: 0.2}}}}
          onnx: {{type: export_onnx, model: base, check_samples: 1}}
          opt: {{type: optimize_onnx, model: onnx}}
          q: {{type: quantize, model: opt}}
          npu: {{type: quantize, model: onnx, data: data, calibration_samples: 16, target: {{device: npu, fallback: cpu}}}}
          report: {{type: evaluate, models: [onnx, q, npu], data: data, metrics: [accuracy, latency], repeats: 5, blocks: 1, warmup: 1}}
    """)
    out = tmp_path / "out"
    assert cli("run", wf, "--cache-dir", tmp_path / "c", "--output", out, "--quiet") == 0
    doc = json.loads((out / "run.json").read_text())
    steps = doc["steps"]
    assert steps["q"]["choices"]["method"] == "dynamic_int8" and steps["q"]["target"] is None
    assert steps["npu"]["choices"] == {"method": "static_int8", "activation_type": "uint16", "profile": "qnn",
                                       "reason": steps["npu"]["choices"]["reason"], "isa": None, "skip_layer_norm": None}
    assert steps["q"]["choices"]["isa"] == doc["platform"]["cpu"]["isa"]  # built for this machine's CPU
    assert steps["npu"]["target"]["device"] == "npu"
    assert steps["opt"]["choices"]["skip_layer_norm"] is fuse_skip_layer_norm(detect_isa()) and steps["opt"]["execution"]["provider"] == "CPUExecutionProvider"
    execution = steps["report"]["execution"]
    assert execution["provider"] == "CPUExecutionProvider" and execution["threads"] == 1
    assert execution["models"] == {"onnx": "CPUExecutionProvider", "q": "CPUExecutionProvider", "npu": "CPUExecutionProvider"}
    assert doc["metrics"]["report"]["npu"]["latency_provider"] == "CPUExecutionProvider"
    assert "(on CPUExecutionProvider)" in (out / "report.md").read_text()


def qdq_unwrapped(source, quantized) -> Counter:
    """Nodes of `source` with float activations whose float inputs do not come from a DequantizeLinear, or whose
    float outputs do not go only into QuantizeLinear, in `quantized` (matched by node name)."""
    import onnx

    src = onnx.shape_inference.infer_shapes(onnx.load(str(source)))
    floats = {v.name for v in [*src.graph.value_info, *src.graph.input, *src.graph.output]
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    weights = {t.name for t in src.graph.initializer}
    q = onnx.load(str(quantized)).graph
    producer = {o: n.op_type for n in q.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in q.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    by_name = {n.name: n for n in q.node}
    bad = Counter()
    for node in src.graph.node:
        ins = [i for i in node.input if i in floats and i not in weights]
        outs = [o for o in node.output if o in floats]
        if node.op_type == "Cast" or not (ins or outs):
            continue
        qnode = by_name[node.name]
        q_ins = [qi for i, qi in zip(node.input, qnode.input) if i in ins]
        q_outs = [qo for o, qo in zip(node.output, qnode.output) if o in outs]
        if any(producer.get(i) != "DequantizeLinear" for i in q_ins) or \
                any(set(consumers.get(o, [])) != {"QuantizeLinear"} for o in q_outs):
            bad[node.op_type] += 1
    return bad


@pytest.mark.parametrize(("providers", "activation", "low"), [(None, "uint16", "UINT16"),
                                                               (["OpenVINOExecutionProvider"], "uint8", "UINT8")])
def test_npu_qdq_wraps_every_quantizable_op(providers, activation, low, tiny_dataset, make_ctx, tmp_path_factory,
                                            tiny_bert_classifier_dir):
    import numpy as np
    import onnx

    from passes.base import SimpleContext
    from passes.onnx.export import ExportOnnx
    from passes.onnx.quantize import Quantize
    from schemas.steps import ExportOnnxConfig
    from tests.builders import make_artifact
    from tests.builders import run_onnx

    out = tmp_path_factory.mktemp("npu_export")
    src = make_artifact("hf_model", tiny_bert_classifier_dir, {"task": "text-classification", "labels": ["ham", "spam"]})
    meta = ExportOnnx(ExportOnnxConfig(type="export_onnx", model="upstream", check_samples=1)).run(
        {"model": src}, SimpleContext(step="onnx", out_dir=out, quiet=True))
    onnx_art = make_artifact("onnx_model", out, meta, step="onnx")
    ctx = make_ctx("npu")
    ctx = SimpleContext(step="npu", out_dir=ctx.out_dir, quiet=True,
                        target=Target(device="npu", providers=providers, fallback="cpu"))
    qmeta = Quantize(QuantizeConfig(type="quantize", model="onnx", data="data", split="validation")).run(
        {"model": onnx_art, "data": tiny_dataset}, ctx)
    assert qmeta["choices"]["activation_type"] == activation and qmeta["method"] == "static_int8"
    assert qmeta["execution"]["provider"] == "CPUExecutionProvider"  # the check ran it on the CPU provider
    counts = Counter(n.op_type for n in onnx.load(str(ctx.out_dir / "model.onnx")).graph.node)
    matmuls = Counter(n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node)["MatMul"]
    assert counts["QuantizeLinear"] > 3 * matmuls and counts["DequantizeLinear"] > counts["QuantizeLinear"]
    assert qdq_unwrapped(out / "model.onnx", ctx.out_dir / "model.onnx") == Counter()
    zero_points = [t for t in onnx.load(str(ctx.out_dir / "model.onnx")).graph.initializer if t.name.endswith("zero_point")]
    assert any(onnx.TensorProto.DataType.Name(t.data_type) == low for t in zero_points)
    np.testing.assert_allclose(run_onnx(ctx.out_dir), run_onnx(out), atol=0.05)
