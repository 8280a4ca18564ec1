"""Olive passes -> workflow steps, for `pipeline import-olive` (pure Python: Olive is never imported).

A pass becomes our native step when one does the same job (see `NATIVE`), with the parameters that
have an equivalent field mapped; every other parameter is reported as not converted, with the reason.
Any other pass becomes a `type: olive` step that runs Olive's own pass with its config as written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from schemas.olive_manifest import olive_pass

#: Keys of an Olive pass entry that are run settings, not pass parameters, with what happens to them.
RUN_KEYS = {
    "host": "a per-pass host system: every step runs where `pipeline run` (or `pipeline submit`) runs it",
    "evaluator": "a per-pass evaluator: the workflow's evaluate step measures the final model",
    "output_name": "output names come from the step name",
    "disable_search": "nothing is searched here: each step runs its config as given",
    "clean_run_cache": "the content cache is never stale: nothing to clean",
    "save_as_external_data": "ONNX steps write external data (model.onnx.data) when the model needs it",
    "all_tensors_to_one_file": "ONNX steps write external data (model.onnx.data) when the model needs it",
    "external_data_name": "ONNX steps name external data model.onnx.data",
    "size_threshold": "ONNX steps decide external data themselves",
    "convert_attribute": "ONNX steps decide external data themselves",
}
#: Olive's keys that name a data config.
DATA_KEYS = ("data_config", "train_data_config", "calibration_data_config")
#: Olive passes that take and return a PyTorch model (the rest of the unknown ones are taken to write ONNX).
_OPT_LEVELS = {0: "none", 1: "basic", 2: "extended", 99: "all"}
_QTYPES = {"QInt8": "qint8", "QUInt8": "quint8"}
_ACTIVATIONS = {"QUInt8": "uint8", "QUInt16": "uint16"}
_CALIBRATION = {"MinMax": "minmax", "Entropy": "entropy", "Percentile": "percentile"}
_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_TRAINING_ARGS = {"max_steps": "max_steps", "num_train_epochs": "epochs", "learning_rate": "learning_rate",
                  "per_device_train_batch_size": "batch_size", "gradient_accumulation_steps": "gradient_accumulation_steps",
                  "weight_decay": "weight_decay", "warmup_ratio": "warmup_ratio", "lr_scheduler_type": "lr_scheduler",
                  "seed": "seed", "logging_steps": "logging_steps", "eval_strategy": "eval_strategy",
                  "evaluation_strategy": "eval_strategy", "eval_steps": "eval_steps"}
_GENAI_OPTIONS = ("int4_block_size", "int4_accuracy_level", "int4_is_symmetric", "int4_op_types_to_quantize",
                  "int4_nodes_to_exclude", "exclude_embeds", "exclude_lm_head", "enable_cuda_graph",
                  "include_hidden_states", "use_qdq", "use_8bits_moe", "use_webgpu_fp32", "use_cuda_bf16")


@dataclass
class Emitted:
    """One step of the generated workflow: its name, fields, a comment above it and per-field comments."""

    name: str
    body: dict
    note: str
    field_notes: dict[str, str] = field(default_factory=dict)


@dataclass
class Chain:
    """What the passes converted so far hand on: the model step, its kind, the data steps, what was skipped."""

    model: str
    kind: str  # hf_model | onnx_model | adapter
    task: str | None
    data: dict[str, str]  # Olive data config name -> load_data step
    data_hints: dict[str, dict]  # load_data step -> training hints (max_length) from Olive's pre-processing
    unconverted: list[tuple[str, str]]
    new_name: Callable[[str], str]
    pending_adapter: str | None = None

    def skip(self, where: str, reason: str) -> None:
        """Record something that was not converted (listed at the end, never dropped silently)."""
        self.unconverted.append((where, reason))


def convert_pass(name: str, cfg: dict, chain: Chain) -> list[Emitted]:
    """One Olive pass (already flattened) -> the steps it becomes; `chain` moves on to the last one."""
    kind = str(cfg.get("type", ""))
    where = f"passes.{name}"
    params = {k: v for k, v in cfg.items() if k != "type"}
    for key in list(params):
        if key in RUN_KEYS:
            chain.skip(f"{where}.{key}", RUN_KEYS[key])
            params.pop(key)
        elif isinstance(params[key], str) and params[key] in ("SEARCHABLE_VALUES", "DEFAULT_VALUE"):
            chain.skip(f"{where}.{key}", f"{params.pop(key)}: Olive's search space; sweeps are not built yet, "
                       "the field's default is used")
    out: list[Emitted] = []
    if kind == "MergeAdapterWeights" and chain.pending_adapter:
        step = chain.new_name(name)
        out.append(Emitted(step, {"type": "merge_adapter", "adapter": chain.pending_adapter},
                           f"from {where} (MergeAdapterWeights): merge the adapter into its base"))
        _report_rest(params, where, "merge_adapter", chain)
        chain.model, chain.kind, chain.pending_adapter = step, "hf_model", None
        return out
    if chain.pending_adapter:  # Olive's LoRA output (the model with its adapter) feeds the next pass: merge first
        out.append(_merge_pending(chain, f"Olive hands the model with its adapter on to {where}"))
    builder = NATIVE.get(kind)
    step = chain.new_name(name)
    if builder is None:
        out.append(_olive_step(step, kind, where, params, chain))
    else:
        out.append(builder(step, where, params, chain))
        _report_rest(params, where, out[-1].body["type"], chain)
    return out


def finish(chain: Chain) -> list[Emitted]:
    """After the last pass: a LoRA output is merged, as Olive's output model carries its adapter."""
    if chain.pending_adapter:
        return [_merge_pending(chain, "Olive's output is the model with its adapter")]
    return []


def _merge_pending(chain: Chain, why: str) -> Emitted:
    adapter = chain.pending_adapter
    step = chain.new_name(f"{adapter}_merged")
    chain.model, chain.kind, chain.pending_adapter = step, "hf_model", None
    return Emitted(step, {"type": "merge_adapter", "adapter": adapter}, f"added after {adapter}: {why}")


def _report_rest(params: dict, where: str, step_type: str, chain: Chain) -> None:
    """Whatever the builder did not take is listed, with the reason."""
    for key in params:
        chain.skip(f"{where}.{key}", f"{step_type} has no equivalent field")


def _data_ref(params: dict, where: str, chain: Chain, key_order=DATA_KEYS) -> str | None:
    for key in key_order:
        if key not in params:
            continue
        value = params.pop(key)
        if isinstance(value, str) and value in chain.data:
            return chain.data[value]
        chain.skip(f"{where}.{key}", f"data config {value!r} is inline or unknown: name a data config in data_configs")
    return None


def _take(params: dict, body: dict, mapping: dict[str, str], convert: dict[str, Callable[[Any], Any]] | None = None,
          where: str = "", chain: Chain | None = None) -> None:
    """Move Olive params into `body` under our field names; a value with no equivalent is skipped with a reason."""
    for olive_key, ours in mapping.items():
        if olive_key not in params:
            continue
        value = params.pop(olive_key)
        fn = (convert or {}).get(olive_key)
        new = fn(value) if fn else value
        if new is None and value is not None and chain is not None:
            chain.skip(f"{where}.{olive_key}", f"value {value!r} has no equivalent in {body['type']}")
            continue
        body[ours] = new


def _export_onnx(step: str, where: str, params: dict, chain: Chain) -> Emitted:
    body: dict = {"type": "export_onnx", "model": chain.model}
    notes = {}
    if chain.task == "causal-lm":
        body["exporter"] = "optimum"
        notes["exporter"] = "a plain ONNX decoder, as OnnxConversion writes (ModelBuilder maps to exporter genai)"
    _take(params, body, {"target_opset": "opset"})
    if params.get("torch_dtype") in ("float32", "fp32", None) and "torch_dtype" in params:
        params.pop("torch_dtype")  # what export_onnx does anyway
    chain.model, chain.kind = step, "onnx_model"
    return Emitted(step, body, f"from {where} (OnnxConversion)", notes)


def _optimize(step: str, where: str, params: dict, chain: Chain) -> Emitted:
    body: dict = {"type": "optimize_onnx", "model": chain.model}
    _take(params, body, {"model_type": "model_type", "num_heads": "num_heads", "hidden_size": "hidden_size",
                         "opt_level": "level", "float16": "fp16", "force_fp32_ops": "fp16_op_block_list",
                         "optimization_options": "fusion_options"},
          {"opt_level": _OPT_LEVELS.get, "num_heads": lambda v: v or None, "hidden_size": lambda v: v or None,
           "optimization_options": lambda v: {k: x for k, x in v.items() if isinstance(x, bool)} or None},
          where, chain)
    for key in [k for k in ("num_heads", "hidden_size") if body.get(k) is None]:
        body.pop(key, None)  # Olive's 0 means "from the model": our default
    if params.get("only_onnxruntime") is False:
        params.pop("only_onnxruntime")  # the fusions run: as here
    chain.model, chain.kind = step, "onnx_model"
    return Emitted(step, body, f"from {where} (OrtTransformersOptimization)")


def _quantize(method: str):
    def build(step: str, where: str, params: dict, chain: Chain) -> Emitted:
        olive_type = {"dynamic_int8": "OnnxDynamicQuantization", "static_int8": "OnnxStaticQuantization",
                      "int4": "int4 weight-only", "fp16": "OnnxFloatToFloat16"}[method]
        chosen, note = method, f"from {where} ({olive_type})"
        if params.pop("__onnx_quantization__", False):
            mode = params.pop("quant_mode", None)
            chosen = "static_int8" if mode == "static" else "dynamic_int8"
            note = f"from {where} (OnnxQuantization, quant_mode {mode or 'not set'})"
            if mode is None:
                chain.skip(f"{where}.quant_mode", "not set: Olive searches dynamic and static; converted to "
                           "dynamic_int8 (add a static_int8 quantize step beside it to compare; sweeps are not built yet)")
        body: dict = {"type": "quantize", "model": chain.model, "method": chosen}
        if chosen == "static_int8":
            data = _data_ref(params, where, chain)
            if data:
                body["data"] = data
            _take(params, body, {"calibrate_method": "calibration", "activation_type": "activation_type",
                                 "calibration_sampling_size": "calibration_samples"},
                  {"calibrate_method": _CALIBRATION.get, "activation_type": _ACTIVATIONS.get}, where, chain)
            if params.get("quant_format", "QDQ") == "QDQ":
                params.pop("quant_format", None)  # static_int8 writes QDQ
        if chosen in ("dynamic_int8", "static_int8"):
            _take(params, body, {"per_channel": "per_channel", "weight_type": "weight_type",
                                 "op_types_to_quantize": "op_types", "nodes_to_exclude": "exclude_nodes",
                                 "op_types_to_exclude": "exclude_op_types"}, {"weight_type": _QTYPES.get}, where, chain)
        if chosen == "int4":
            if params.get("bits", 4) == 4:
                params.pop("bits", None)
            _take(params, body, {"block_size": "block_size", "is_symmetric": "symmetric",
                                 "accuracy_level": "accuracy_level", "nodes_to_exclude": "exclude_nodes"})
        if chosen == "fp16":
            _take(params, body, {"op_block_list": "exclude_op_types", "node_block_list": "exclude_nodes"})
        if chosen == "dynamic_int8":
            for key in ("calibrate_method", "activation_type", "quant_format", "calibration_sampling_size"):
                if key in params:
                    chain.skip(f"{where}.{key}", f"{params.pop(key)!r}: a static quantization setting; dynamic_int8 "
                               "quantizes activations at run time")
            for key in DATA_KEYS:
                if key in params:
                    chain.skip(f"{where}.{key}", "dynamic int8 is not calibrated: the data is not used")
                    params.pop(key)
        chain.model, chain.kind = step, "onnx_model"
        return Emitted(step, body, note)
    return build


def _hqq(step: str, where: str, params: dict, chain: Chain) -> Emitted:
    emitted = _quantize("int4")(step, where, params, chain)
    emitted.body["algorithm"] = "hqq"
    emitted.note = f"from {where} (OnnxHqqQuantization)"
    return emitted


def _onnx_quantization(step: str, where: str, params: dict, chain: Chain) -> Emitted:
    params["__onnx_quantization__"] = True
    return _quantize("dynamic_int8")(step, where, params, chain)


def _model_builder(step: str, where: str, params: dict, chain: Chain) -> Emitted:
    body: dict = {"type": "export_onnx", "model": chain.model, "exporter": "genai"}
    _take(params, body, {"precision": "precision"},
          {"precision": lambda p: p if p in ("fp32", "fp16", "int4", "int8") else None}, where, chain)
    options = {k: params.pop(k) for k in _GENAI_OPTIONS if k in params}
    extra = params.pop("extra_options", None)
    if isinstance(extra, dict):
        options.update(extra)
    if options:
        body["genai_options"] = options
    body["builder_defaults"] = True
    chain.model, chain.kind = step, "onnx_model"
    return Emitted(step, body, f"from {where} (ModelBuilder): the onnxruntime-genai builder",
                   {"builder_defaults": "the builder's own settings, as Olive runs it; remove it for this tool's "
                                        "tuned int4 (faster at a lower perplexity, see the README)"})


def _lora(qlora: bool):
    def build(step: str, where: str, params: dict, chain: Chain) -> Emitted:
        body: dict = {"type": "qlora" if qlora else "lora", "model": chain.model}
        data = _data_ref(params, where, chain, ("train_data_config", "data_config"))
        if data:
            body["data"] = data
            hints = chain.data_hints.get(data, {})
            if "max_length" in hints:
                body["max_length"] = hints["max_length"]
        if "eval_data_config" in params:
            chain.skip(f"{where}.eval_data_config", "lora evaluates on the data step's validation split")
            params.pop("eval_data_config")
        _take(params, body, {"r": "r", "lora_r": "r", "alpha": "alpha", "lora_alpha": "alpha",
                             "lora_dropout": "dropout", "target_modules": "target_modules"})
        if qlora:
            _take(params, body, {"quant_type": "quant_type", "double_quant": "double_quant",
                                 "compute_dtype": "compute_dtype"}, {"compute_dtype": _DTYPES.get}, where, chain)
        args = params.pop("training_args", None) or {}
        args = dict(args) if isinstance(args, dict) else {}
        _take(args, body, _TRAINING_ARGS)
        if args.pop("bf16", False) is True:
            body["precision"] = "bf16"
        if args.pop("fp16", False) is True:
            body["precision"] = "fp16"
        if qlora and "gradient_checkpointing" in args:
            body["gradient_checkpointing"] = bool(args.pop("gradient_checkpointing"))
        for key in args:
            chain.skip(f"{where}.training_args.{key}", f"{body['type']} has no equivalent field")
        chain.model, chain.kind, chain.pending_adapter = step, "adapter", step
        return Emitted(step, body, f"from {where} ({'QLoRA' if qlora else 'LoRA'}): a PEFT adapter")
    return build


def _olive_step(step: str, kind: str, where: str, params: dict, chain: Chain) -> Emitted:
    """A pass with no native equivalent runs as Olive's own pass (`type: olive`)."""
    body: dict = {"type": "olive", "pass": kind, "model": chain.model}
    data = _data_ref(params, where, chain, DATA_KEYS + ("eval_data_config",))
    if data:
        body["data"] = data
    if params:
        body["config"] = params
    entry = olive_pass(kind) or {}  # the manifest generated from Olive's own classes says what each pass produces
    produced = entry.get("produces") or "onnx_model"
    chain.model, chain.kind = step, produced
    return Emitted(step, body, f"from {where}: Olive's {kind} pass, run as a step (no native step does the same job)")


NATIVE: dict[str, Callable[[str, str, dict, Chain], Emitted]] = {
    "OnnxConversion": _export_onnx,
    "OrtTransformersOptimization": _optimize,
    "OnnxDynamicQuantization": _quantize("dynamic_int8"),
    "OnnxStaticQuantization": _quantize("static_int8"),
    "OnnxQuantization": _onnx_quantization,
    "OnnxMatMul4Quantizer": _quantize("int4"),
    "OnnxBlockWiseRtnQuantization": _quantize("int4"),
    "OnnxHqqQuantization": _hqq,
    "OnnxFloatToFloat16": _quantize("fp16"),
    "ModelBuilder": _model_builder,
    "LoRA": _lora(False),
    "QLoRA": _lora(True),
}
