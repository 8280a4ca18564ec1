"""passes.onnx.quant_plan: which quantization a step runs on its target; the calibration-data rule."""

from __future__ import annotations

import pytest

from passes.onnx.quant_plan import plan_quantization
from schemas import Target
from schemas.steps import QuantizeConfig


@pytest.mark.parametrize(("target", "llm", "method", "activation", "profile"), [
    (Target(), False, "dynamic_int8", None, None),
    (Target(), True, "int4", None, None),
    (Target(device="gpu"), False, "fp16", None, None),
    (Target(device="gpu"), True, "int4", None, None),
    (Target(device="npu"), False, "static_int8", "uint16", "qnn"),
    (Target(device="npu", providers=["OpenVINOExecutionProvider"]), False, "static_int8", "uint8", "npu"),
    (Target(device="npu", providers=["VitisAIExecutionProvider"]), False, "static_int8", "uint8", "npu"),
    (Target(device="npu"), True, "int4", None, None),
])
def test_quantize_picks_what_the_target_runs_best(target, llm, method, activation, profile):
    plan = plan_quantization(QuantizeConfig(type="quantize", model="m", data="d"), target, causal_lm=llm)
    assert (plan.method, plan.activation_type, plan.profile) == (method, activation, profile)
    assert plan.reason


def test_quantize_explicit_fields_win_and_what_is_keyed():
    explicit = QuantizeConfig(type="quantize", model="m", method="dynamic_int8")
    plan = plan_quantization(explicit, Target(device="npu"), causal_lm=False)
    assert plan.method == "dynamic_int8" and plan.reason == "set in the step"
    assert not explicit.uses_target  # its result does not depend on the target: the target stays out of its key
    static = QuantizeConfig(type="quantize", model="m", method="static_int8", data="d", activation_type="uint8")
    assert plan_quantization(static, Target(device="npu"), False).activation_type == "uint8"
    assert plan_quantization(static, Target(), False).profile == "cpu" and static.uses_target
    assert QuantizeConfig(type="quantize", model="m").uses_target
    with pytest.raises(ValueError, match="`activation_type` applies to static_int8, not int4"):
        QuantizeConfig(type="quantize", model="m", method="int4", activation_type="uint16")


def test_quantize_on_npu_needs_data_before_anything_runs():
    (issue,) = QuantizeConfig(type="quantize", model="m").target_issues(Target(device="npu"))
    assert issue[0] == ("data",) and "calibrated on data" in issue[1]
    assert QuantizeConfig(type="quantize", model="m").target_issues(Target()) == []
    with pytest.raises(ValueError, match="`static_int8` is calibrated on data"):
        QuantizeConfig(type="quantize", model="m", method="static_int8")
