"""Which quantization a `quantize` step runs: the step's own fields, else what its target runs best.

Runtime policy of the onnx family (the contract in `schemas.steps.onnx` only declares the fields and
`QuantPlan`, the record of the decision kept in the step's meta as `choices`).

Without a `method`: causal LMs get weight-only int4 on every device (decoding is bound by reading the
weights); encoders get dynamic int8 on a cpu target, fp16 on a gpu and static QDQ on an npu. Static QDQ's
op profile and activation type follow the planned provider: QNN takes uint16 activations with int8 weights.
"""

from __future__ import annotations

from schemas import Target
from schemas.steps import QuantizeConfig, QuantPlan

#: An encoder's default method per target device.
ENCODER_METHODS = {"cpu": "dynamic_int8", "gpu": "fp16", "npu": "static_int8"}
#: Why that method, as logged and recorded.
ENCODER_REASONS = {
    "dynamic_int8": "an encoder on a cpu target: dynamic int8 (int8 kernels, no calibration)",
    "fp16": "an encoder on a gpu target: float16 (tensor cores; no calibration)",
    "static_int8": "an encoder on an npu target: static QDQ on every quantizable op (NPUs run integer "
                   "graphs only), calibrated on the workflow's data",
}


def plan_quantization(cfg: QuantizeConfig, target: Target, causal_lm: bool) -> QuantPlan:
    """What `cfg` does on `target` for an encoder or a causal LM: explicit fields win, then the target."""
    if cfg.method is not None:
        method, reason = cfg.method, "set in the step"
    elif causal_lm:
        method = "int4"
        reason = (f"a causal LM on a {target.device} target: weight-only int4 (decoding is bound by reading the "
                  "weights; the activations stay float)")
    else:
        method = ENCODER_METHODS[target.device]
        reason = ENCODER_REASONS[method]
    if method != "static_int8":
        return QuantPlan(method, None, None, reason)
    if target.device != "npu":
        profile = "cpu"
    else:
        profile = "qnn" if target.planned_provider() == "QNNExecutionProvider" else "npu"
    activation = cfg.activation_type or ("uint16" if profile == "qnn" else "uint8")
    if cfg.activation_type is None and profile == "qnn":
        reason += "; uint16 activations with int8 weights, QNN's accurate HTP format"
    return QuantPlan(method, activation, profile, reason)
