"""Olive's input model, data configs, systems and `azureml_client` -> `model`, `load_data`, `target`, `azureml:`.

Part of `pipeline import-olive` (pure Python). A hub dataset or model is kept as a hub id when
`load_data` / `model` can read it as one; data or models in Azure ML are kept as references under
`azureml.inputs` (what `pipeline submit` reads instead of uploading) and need `--data` / `--model`
for a local run; everything else that has no equivalent is listed as not converted.
"""

from __future__ import annotations

import os
import re
from typing import Any

from schemas.target import PROVIDER_SOURCES

from .olive_import_passes import Chain, Emitted

_TASKS = {"text-classification": "text-classification", "text-generation": "causal-lm",
          "text-generation-with-past": "causal-lm", "feature-extraction": "feature-extraction",
          "token-classification": "token-classification"}
_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "fp16": "float16", "bf16": "bfloat16"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_FORMATS = {"csv": "csv", "json": "json", "parquet": "parquet", "text": "text"}
_DATA_NOTES = {
    "batch_size": "training and evaluate set their own batch sizes",
    "split": "load_data splits the data itself into train/validation/test (`splits`)",
    "corpus_strategy": "causal-LM training packs examples with `packing` on the lora step",
    "add_special_tokens": "tokenization follows the model's tokenizer",
    "trust_remote_code": "datasets are read as files or plain hub datasets; no dataset script runs",
    "shuffle": "load_data shuffles with its `seed`",
    "user_script": "custom data code (user scripts) is not run by load_data",
    "script_dir": "custom data code (user scripts) is not run by load_data",
}
_SECTIONS = ("params_config", "load_dataset_config", "pre_process_data_config", "dataloader_config",
             "post_process_data_config")
_DATA_KEYS = {"name", "type", "data_name", "subset", "data_files", "input_cols", "label_cols", "label_col",
              "max_samples", "text_template", "text_cols", "max_seq_len", "source_max_len"}


def _is_placeholder(value: Any) -> bool:
    return not isinstance(value, str) or not value.strip() or bool(re.match(r"^<.*>$|^\$\{.*\}$", value.strip()))


def convert_model(cfg: dict, step: str, override: str | None, paths, azure_inputs: dict,
                  unconverted: list) -> tuple[Emitted, str | None]:
    """`input_model` -> a `model` step (and the model's task, for the passes that depend on it)."""
    kind = cfg.get("type", "HfModel")
    hf = cfg.get("hf_config") if isinstance(cfg.get("hf_config"), dict) else {}  # the older PyTorchModel form
    source = cfg.get("model_path", hf.get("model_name"))
    task_raw = cfg.get("task", hf.get("task", "text-generation-with-past" if kind in ("HfModel", "PyTorchModel") else None))
    task = _TASKS.get(task_raw)
    body: dict = {"type": "model"}
    notes: dict[str, str] = {}
    if isinstance(source, dict):  # a model in Azure ML: kept as the input `pipeline submit` reads
        name, version = source.get("name"), source.get("version")
        uri = (f"azureml://registries/{source['registry_name']}/models/{name}/versions/{version}"
               if source.get("registry_name") else f"azureml:{name}:{version}")
        azure_inputs[step] = uri
        source = str(name)
        if override is None:
            unconverted.append(("input_model.model_path", f"a model in Azure ML ({uri}, kept under azureml.inputs): "
                                "give --model PATH for a local copy to validate and run here"))
    if override:
        body["path"] = override if _HUB_ID.match(override) and not os.path.exists(override) else paths.from_cli(override)
    else:
        body["path"] = source if _HUB_ID.match(str(source)) else paths.from_olive(str(source))
    notes["path"] = f"replaced by --model (Olive: {source})" if override else f"Olive's model_path"
    if kind not in ("HfModel", "PyTorchModel"):
        unconverted.append(("input_model.type", f"{kind}: the model step reads Hugging Face models (folder, hub id or "
                            "GGUF); start from the Hugging Face model, or give --model PATH"))
    if task and ("task" in cfg or "task" in hf):
        body["task"] = task
    elif task_raw and not task:
        unconverted.append(("input_model.task", f"{task_raw!r}: the model step knows {', '.join(sorted(set(_TASKS.values())))}"))
    kwargs = {**(cfg.get("load_kwargs") or {}), **(hf.get("from_pretrained_args") or {})}
    if kwargs.get("trust_remote_code") is True:
        body["trust_remote_code"] = True
    if _DTYPES.get(str(kwargs.get("torch_dtype"))):
        body["dtype"] = _DTYPES[str(kwargs["torch_dtype"])]
    for key in sorted(set(kwargs) - {"trust_remote_code", "torch_dtype"}):
        unconverted.append((f"input_model.load_kwargs.{key}", "the model step loads with transformers' defaults"))
    for key in sorted(set(cfg) - {"type", "model_path", "task", "load_kwargs", "hf_config"}):
        unconverted.append((f"input_model.{key}", "no equivalent in the model step (exports take their inputs from "
                            "the model's config)" if key in ("io_config", "dummy_inputs_func") else
                            "no equivalent in the model step"))
    return Emitted(step, body, f"from input_model ({kind})", notes), task


def convert_data(cfg: dict, index: int, chain: Chain, replacements: dict[str, str], paths,
                 azure_inputs: dict) -> Emitted | None:
    """One Olive data config -> a `load_data` step (registered in `chain.data` under its Olive name)."""
    name = str(cfg.get("name", f"data{index}"))
    where = f"data_configs[{index}] ({name})"
    if cfg.get("type", "HuggingfaceContainer") != "HuggingfaceContainer":
        chain.skip(where, f"{cfg.get('type')}: only Hugging Face style data configs (files or hub datasets) map to "
                   "load_data")
        return None
    flat: dict[str, Any] = {}
    for part in _SECTIONS:
        section = cfg.get(part) or {}
        flat.update(section.get("params", section) if isinstance(section, dict) else {})
    kwargs = flat.pop("component_kwargs", None) or {}
    for section in kwargs.values():
        flat.update(section if isinstance(section, dict) else {})
    flat.pop("type", None)
    flat.update({k: v for k, v in cfg.items() if k in _DATA_KEYS and k not in ("type", "name")})
    flat.update({k: v for k, v in cfg.items() if k not in _DATA_KEYS and k not in _SECTIONS})  # reported below
    step = chain.new_name(name)
    body: dict = {"type": "load_data"}
    notes: dict[str, str] = {}
    data_name, files, subset = flat.pop("data_name", None), flat.pop("data_files", None), flat.pop("subset", None)
    if isinstance(files, dict):  # a file in an Azure ML datastore
        uri = f"azureml://datastores/{files.get('datastore_name')}/paths/{files.get('relative_path')}"
        azure_inputs[step] = uri
        files = str(files.get("relative_path"))
        if name not in replacements:
            chain.skip(f"{where}.data_files", f"in an Azure ML datastore ({uri}, kept under azureml.inputs): give "
                       f"--data {name}=FILE for a local copy to validate and run here")
    if name in replacements:
        body["path"] = paths.from_cli(replacements[name])
        notes["path"] = f"replaced by --data (Olive: {files or data_name})"
    elif isinstance(files, str):
        body["path"] = paths.from_olive(files)
        notes["path"] = "Olive's data_files"
        if str(data_name) in _FORMATS and not re.search(r"\.(csv|tsv|jsonl?|parquet|txt)$", files):
            body["format"] = _FORMATS[str(data_name)]
    elif isinstance(data_name, str) and _HUB_ID.match(data_name) and subset is None:
        body["path"] = data_name
        notes["path"] = f"a hub dataset, downloaded when the step runs; offline: --data {name}=FILE"
    else:  # a placeholder that fails validation at this line, rather than a hub id that would load the wrong data
        body["path"] = f"{name}.csv"
        shown = f"{data_name!r}" + (f" subset {subset!r}" if subset else "") if data_name else "(none given)"
        notes["path"] = f"placeholder for a local copy of the hub dataset {shown}: --data {name}=FILE"
        chain.skip(f"{where}.data_name", f"the hub dataset {shown}: load_data reads files or a plain `org/name` hub "
                   f"dataset; give --data {name}=FILE (a CSV/JSON/Parquet export of it)")
    _columns(flat, body, notes, chain, where)
    if "max_samples" in flat:
        body["max_samples"] = flat.pop("max_samples")
    for key in ("max_seq_len", "source_max_len"):
        if key in flat:
            chain.data_hints.setdefault(step, {})["max_length"] = flat.pop(key)
    for key, value in flat.items():
        chain.skip(f"{where}.{key}", f"{value!r}: " + _DATA_NOTES.get(key, "no equivalent in load_data"))
    chain.data[name] = step
    return Emitted(step, body, f"from {where}", notes)


def _columns(flat: dict, body: dict, notes: dict, chain: Chain, where: str) -> None:
    inputs = flat.pop("input_cols", None) or []
    labels = flat.pop("label_cols", None) or ([flat.pop("label_col")] if "label_col" in flat else [])
    template, text_cols = flat.pop("text_template", None), flat.pop("text_cols", None) or []
    if inputs:
        body["text"] = inputs[0]
        if len(inputs) > 1:
            body["text_pair"] = inputs[1]
        if len(inputs) > 2:
            chain.skip(f"{where}.input_cols", f"{inputs[2:]}: load_data takes at most two text columns")
    if labels:
        body["label"] = labels[0]
    if template:
        body["template"] = template
    elif text_cols:
        body["template"] = "\n".join(f"{{{c}}}" for c in text_cols)
        notes["template"] = "Olive's text_cols, joined"
    if not inputs and not template and not text_cols:
        causal = chain.task == "causal-lm"
        body.update({"prompt": "prompt", "response": "response"} if causal else {"text": "text", "label": "label"})
        chain.skip(f"{where}.columns", "the Olive config names no columns; assumed " +
                   ("prompt/response" if causal else "text/label") + ": check them against the data")


def convert_target(systems: dict, engine: dict, unconverted: list) -> tuple[dict | None, str | None]:
    """The engine's target system (else its host, else the only system) -> `target`."""
    chosen = engine.get("target") or engine.get("host")
    name = chosen if isinstance(chosen, str) else "engine.target" if chosen else next(iter(systems), None)
    system = chosen if isinstance(chosen, dict) else systems.get(name) if name else None
    if isinstance(engine.get("host"), str) and engine.get("target") and engine["host"] != engine["target"]:
        unconverted.append(("engine.host", "the host system: steps run where `pipeline run` or `pipeline submit` runs"))
    for other, value in systems.items():
        if other != name and isinstance(value, dict) and value.get("type") != "AzureML":
            unconverted.append((f"systems.{other}", "not the engine's target: a workflow has one target"))
    if not isinstance(system, dict):
        return None, None
    kind = system.get("type", "LocalSystem")
    for key in sorted(set(system) - {"type", "accelerators", "aml_compute", "aml_docker_config",
                                     "aml_environment_config", "tags", "hf_token"}):
        unconverted.append((f"systems.{name}.{key}", f"{kind}: no equivalent (steps run in this environment, or in "
                            "Azure ML with `pipeline submit`)"))
    accelerators = system.get("accelerators") or [{"device": "cpu"}]
    for i in range(1, len(accelerators)):
        unconverted.append((f"systems.{name}.accelerators[{i}]", "a workflow has one target (a step can override it)"))
    acc = accelerators[0] if isinstance(accelerators[0], dict) else {"device": accelerators[0]}
    device = str(acc.get("device", "cpu")).lower()
    providers = acc.get("execution_providers") or engine.get("execution_providers") or []
    target: dict = {}
    if device in ("cpu", "gpu", "npu"):
        target["device"] = device
    else:
        unconverted.append((f"systems.{name}.accelerators[0].device", f"{device!r}: targets are cpu, gpu or npu"))
    known = [p for p in providers if p in PROVIDER_SOURCES]
    for p in providers:
        if p not in known:
            unconverted.append((f"systems.{name}.accelerators[0].execution_providers", f"{p}: not a provider this tool "
                                f"knows ({', '.join(PROVIDER_SOURCES)})"))
    if known:
        target["providers"] = known
    if target.get("device", "cpu") != "cpu":
        target["fallback"] = "cpu"
    return target or None, f"from systems.{name} ({kind}), accelerator 0"


def azure_client(config: dict, engine: dict, inputs: dict, unconverted: list) -> tuple[dict | None, str | None]:
    """An AzureML system and `azureml_client` -> the `azureml:` section (what `pipeline submit` reads)."""
    systems = config.get("systems") or {}
    aml = [(n, s) for n, s in systems.items() if isinstance(s, dict) and s.get("type") == "AzureML"]
    client = config.get("azureml_client") or {}
    if not aml and not client and not inputs:
        return None, None
    section: dict = {}
    fields = {"subscription_id": "subscription_id", "resource_group": "resource_group", "workspace_name": "workspace"}
    given = {ours: client.get(theirs) for theirs, ours in fields.items() if theirs in client}
    if given and any(_is_placeholder(v) for v in given.values()):
        unconverted.append(("azureml_client", "placeholders, not a workspace: fill subscription_id, resource_group and "
                            "workspace under azureml (or use a config.json)"))
    elif given:
        section.update(given)
    if client.get("aml_config_path"):
        section["config"] = client["aml_config_path"]
    for key in sorted(set(client) - set(fields) - {"aml_config_path"}):
        unconverted.append((f"azureml_client.{key}", "the SDK's default credential and retry settings are used"))
    note = "from " + ", ".join(["azureml_client"] * bool(client) + [f"systems.{n} (AzureML)" for n, _ in aml])
    for name, system in aml[:1]:
        if system.get("aml_compute"):
            section["compute"] = system["aml_compute"]
        env, docker = system.get("aml_environment_config") or {}, system.get("aml_docker_config") or {}
        if env.get("name"):
            section["environment"] = f"azureml:{env['name']}:{env.get('version', '1')}"
        elif docker.get("base_image"):
            section["environment"] = {"image": docker["base_image"]}
        for key in sorted(set(docker) - {"base_image"}):
            unconverted.append((f"systems.{name}.aml_docker_config.{key}", "the environment is built from this "
                                "project's requirements on the base image"))
        if system.get("hf_token"):
            unconverted.append((f"systems.{name}.hf_token", "no hub token is passed to jobs: local models and data are "
                                "uploaded, Azure ML ones read from azureml.inputs"))
        if isinstance(system.get("tags"), dict):
            section["tags"] = system["tags"]
    if inputs:
        section["inputs"] = dict(inputs)
    return section or None, note
