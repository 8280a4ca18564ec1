"""onnxruntime sessions for the passes: built on chosen providers, and fed from a tokenizer.

Which providers a target gets is `passes.ort.providers.choose`; `target_session` builds the session on
that choice with the target's provider options and threads, `make_session` on an explicit provider list
(the output checks use `make_cpu_session`). `encode` and `decoder_feed` turn text into a session's
inputs. onnxruntime is imported inside the functions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from schemas.target import ProviderChoice, Target

from passes.base import PassError, thread_budget
from passes.ort.isa import detect_isa, fuse_skip_layer_norm
from passes.ort.files import CACHE_INPUT_PREFIXES, EXTERNAL_DATA_FILE, has_external_data
from passes.ort.providers import provider_options_for

#: SkipLayerNormalization is slow in this onnxruntime on x86 CPUs (PERFORMANCE-NOTES.md): keep it unfused there.
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def cpu_disabled_optimizers() -> list[str]:
    """The graph optimizers a CPU-provider session on this machine leaves out (none off x86: passes/ort/isa.py)."""
    return [] if fuse_skip_layer_norm(detect_isa()) else list(CPU_DISABLED_OPTIMIZERS)


def cpu_cores() -> int:
    """The CPU cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: Session options `tune_session` measured best for a model, next to its model.onnx (inference.py reads it too).
SESSION_OPTIONS_FILE = "session_options.json"
#: The settings such a file holds (other keys, such as the measurements, are for people).
SESSION_SETTINGS = ("intra_op_num_threads", "graph_optimization_level", "allow_spinning", "execution_mode")


def read_session_settings(folder: Path) -> dict[str, Any] | None:
    """The tuned session settings saved beside a model (None when it was not tuned)."""
    import json

    path = Path(folder) / SESSION_OPTIONS_FILE
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    return {k: doc[k] for k in SESSION_SETTINGS if k in doc}


#: `level` names of `make_session`, as onnxruntime's GraphOptimizationLevel members.
GRAPH_LEVELS = {"none": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                "layout": "ORT_ENABLE_LAYOUT", "all": "ORT_ENABLE_ALL"}


def make_session(model_path: Path, providers: list[str], threads: int | None = None, *,
                 provider_options: list[dict[str, str]] | None = None, level: str = "all",
                 optimized_model_path: Path | None = None, disabled_optimizers: list[str] | None = None,
                 settings: dict[str, Any] | None = None) -> Any:
    """An onnxruntime session on `providers` (in order) with `threads` intra-op threads (default: the runner's
    budget for this step when several run at once, else the cores).

    Graph optimizations run at `level` except those slower than the unfused ops on the CPU provider
    (`disabled_optimizers` replaces that list). `settings` (SESSION_SETTINGS, from `tune_session`) replace the
    threads and level and set spinning and the execution mode. `optimized_model_path` makes onnxruntime write the
    optimized graph there (offline optimization). Providers that onnxruntime does not have built in are
    plugin EPs (see passes.ort.providers): the session then takes every provider through its devices.
    """
    import onnxruntime as ort

    settings = settings or {}
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.get("intra_op_num_threads") or threads or thread_budget() or cpu_cores()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_LEVELS[settings.get("graph_optimization_level", level)])
    if settings.get("execution_mode") == "parallel":  # independent branches at once, on a second inter-op thread
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        options.inter_op_num_threads = 2
    if "allow_spinning" in settings:
        spin = "1" if settings["allow_spinning"] else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    options.log_severity_level = 3  # errors only: the passes report what matters themselves
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
        if has_external_data(Path(model_path).parent):
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name", EXTERNAL_DATA_FILE)
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    if disabled_optimizers is None:
        disabled_optimizers = cpu_disabled_optimizers() if providers[0] == "CPUExecutionProvider" else []
    provider_options = provider_options or [{} for _ in providers]
    built_in = set(ort.get_available_providers())
    if all(p in built_in for p in providers):
        return ort.InferenceSession(str(model_path), options, providers=providers, provider_options=provider_options,
                                    disabled_optimizers=disabled_optimizers or None)
    devices: dict[str, list[Any]] = {}
    for device in ort.get_ep_devices():
        devices.setdefault(device.ep_name, []).append(device)
    for name, opts in zip(providers, provider_options):
        if name not in devices:
            raise PassError(f"execution provider {name} has no device here (onnxruntime offers "
                            f"{', '.join(sorted(devices))}); is its plugin library registered?")
        options.add_provider_for_devices(devices[name], opts)
    return ort.InferenceSession(str(model_path), options, disabled_optimizers=disabled_optimizers or None)


def make_cpu_session(model_path: Path, threads: int | None = None) -> Any:
    """`make_session` on the CPU provider."""
    return make_session(model_path, ["CPUExecutionProvider"], threads)


def target_session(model_path: Path, target: Target, choice: ProviderChoice, threads: int | None = None,
                   **kwargs: Any) -> Any:
    """A session on `choice`'s providers (from `providers.choose`) with the target's options and threads."""
    return make_session(model_path, list(choice.providers), threads or target.threads,
                           provider_options=provider_options_for(target, choice.providers), **kwargs)


def session_inputs(session: Any) -> list[tuple[str, str]]:
    """(name, ONNX type string such as `tensor(int64)`) of a session's inputs."""
    return [(node.name, node.type) for node in session.get_inputs()]


def encode(tokenizer: Any, inputs: list[tuple[str, str]], texts: list[Any], padding: bool | str = True,
           max_length: int | None = None) -> dict[str, Any]:
    """Tokenize texts (strings or (text, pair) tuples) into the model's `inputs`, each in its integer type."""
    import numpy as np

    pairs = [t if isinstance(t, tuple) else (t, None) for t in texts]
    firsts, seconds = [a for a, _ in pairs], [b for _, b in pairs]
    kwargs: dict[str, Any] = {"truncation": True, "padding": padding, "return_tensors": "np"}
    if max_length:
        kwargs["max_length"] = max_length
    enc = tokenizer(firsts, seconds if any(s is not None for s in seconds) else None, **kwargs)
    feed = {}
    for name, onnx_type in inputs:
        values = enc.get(name)
        if values is None and name == "token_type_ids":
            values = np.zeros_like(enc["input_ids"])
        if values is None:
            raise PassError(f"the model takes an input its tokenizer does not produce: {name}")
        feed[name] = values.astype(np.int32 if onnx_type == "tensor(int32)" else np.int64)
    return feed


def decoder_feed(session: Any, input_ids: list[int]) -> dict[str, Any] | None:
    """Inputs for one prefill of a decoder graph (empty KV cache), or None when the graph has no KV cache.

    Decoder exports (optimum, the genai builder) take `past_key_values.*` inputs shaped
    (batch, kv heads, past length, head size) with symbolic batch and length: here 1 and 0.
    """
    import numpy as np

    inputs = session.get_inputs()
    if not any(i.name.startswith(CACHE_INPUT_PREFIXES) for i in inputs):
        return None
    n = len(input_ids)
    types = {"tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(float)": np.float32,
             "tensor(float16)": np.float16}
    feed = {}
    for i in inputs:
        dtype = types.get(i.type, np.float32)
        if i.name == "input_ids":
            feed[i.name] = np.array([input_ids], dtype=dtype)
        elif i.name == "attention_mask":
            feed[i.name] = np.ones((1, n), dtype=dtype)
        elif i.name == "position_ids":
            feed[i.name] = np.arange(n, dtype=dtype)[None, :]
        elif i.name.startswith(CACHE_INPUT_PREFIXES):
            shape = [d if isinstance(d, int) else (1 if k == 0 else 0) for k, d in enumerate(i.shape)]
            feed[i.name] = np.zeros(shape, dtype=dtype)
        else:
            raise PassError(f"the decoder graph takes an input this check cannot fill: {i.name}")
    return feed
