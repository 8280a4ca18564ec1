"""`pipeline import-olive`: Olive run configs (both forms) -> workflows that validate, with what was not converted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.olive_import import convert, import_olive, read_olive_config
from pipelines.validate import load_workflow
from pipelines.yaml_loader import load_yaml
from tests.helpers import cli

CONFIGS = Path(__file__).parent / "olive_configs"


@pytest.fixture
def local_model(tmp_path) -> Path:
    """A local model folder: validation checks that it exists (no model is loaded while importing)."""
    folder = tmp_path / "models" / "tiny"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "bert"}')
    return folder


def _steps(path: Path) -> dict:
    data, _ = load_yaml(path.read_text(), str(path))
    return data["steps"]


def test_classifier_ptq_nested_form(tmp_path, local_model, capsys):
    """The BERT PTQ config (older nested `config` objects): conversion, optimization, quantization, goals."""
    mrpc = tmp_path / "mrpc.csv"
    mrpc.write_text("sentence1,sentence2,label\nThe cat sat.,A cat was sitting.,1\nIt rains.,The sun shines.,0\n")
    out = tmp_path / "wf" / "bert.yaml"
    code = cli("import-olive", CONFIGS / "bert_ptq_cpu.json", "-o", out, "--model", local_model,
               "--data", f"glue_mrpc={mrpc}")
    assert code == 0, capsys.readouterr().err
    loaded = load_workflow(out)
    assert list(_steps(out)) == ["base", "glue_mrpc", "conversion", "transformers_optimization", "quantization",
                                 "evaluate"]
    steps = _steps(out)
    assert steps["base"] == {"type": "model", "path": "../models/tiny", "task": "text-classification"}
    assert steps["glue_mrpc"]["path"] == "../mrpc.csv"
    assert (steps["glue_mrpc"]["text"], steps["glue_mrpc"]["text_pair"], steps["glue_mrpc"]["label"]) == \
        ("sentence1", "sentence2", "label")
    assert steps["conversion"] == {"type": "export_onnx", "model": "base", "opset": 17}
    assert steps["transformers_optimization"]["model_type"] == "bert"
    assert steps["quantization"] == {"type": "quantize", "model": "transformers_optimization", "method": "dynamic_int8",
                                     "per_channel": False}
    report = steps["evaluate"]
    assert report["models"] == ["base", "quantization"] and report["metrics"] == ["accuracy", "f1", "latency", "size"]
    # max-degradation 0.01 -> at most 1 point of accuracy lost; 20% lower latency -> 1.25x speedup
    assert report["goals"] == {"quantization": {"accuracy_delta_pt": {"min": -1.0}, "speedup": {"min": 1.25}}}
    assert loaded.workflow.target.device == "cpu"
    text = out.read_text()
    assert text.startswith("# Imported from the Olive run config bert_ptq_cpu.json")
    assert "# from passes.quantization (OnnxQuantization, quant_mode not set)" in text
    assert "replaced by --data (Olive: None)" not in text and "replaced by --data (Olive: glue)" in text
    tail = text.split("# Not converted")[1]
    for item in ("engine.search_strategy", "passes.quantization.quant_mode", "passes.quantization.reduce_range",
                 "passes.conversion.save_as_external_data", "engine.output_dir", "sub_types.max"):
        assert item in tail
    err = capsys.readouterr().err
    assert "not converted: engine.search_strategy: Olive's search was not converted" in err


def test_llm_model_builder_flat_form(tmp_path, local_model, capsys):
    """The flat-form ModelBuilder int4 config -> export_onnx with the genai builder, its options kept."""
    out = tmp_path / "llm.yaml"
    assert cli("import-olive", CONFIGS / "llm_model_builder_int4.json", "-o", out, "--model", local_model) == 0
    steps = _steps(out)
    assert steps["builder"] == {
        "type": "export_onnx", "model": "base", "exporter": "genai", "precision": "int4",
        "genai_options": {"int4_block_size": 32, "int4_accuracy_level": 4, "exclude_lm_head": False},
        "builder_defaults": True,
    }
    assert load_workflow(out).workflow.outputs == {"model": "builder"}
    tail = out.read_text().split("# Not converted")[1]
    assert "evaluators.lm: evaluator type LMEvaluator" in tail and "passes.builder.metadata_only" in tail
    assert "not converted: log_severity_level" in capsys.readouterr().err


def test_qlora_with_azureml_system(tmp_path, local_model):
    """QLoRA on an AzureML system: hub and datastore data replaced with --data, the azureml section filled."""
    train, evals = tmp_path / "codes.csv", tmp_path / "codes_eval.jsonl"
    train.write_text("prompt,response\nAdd two numbers,def add(a, b): return a + b\nSquare x,def sq(x): return x * x\n")
    evals.write_text(json.dumps({"prompt": "Negate x", "response": "def neg(x): return -x"}) + "\n")
    out = tmp_path / "qlora.yaml"
    result = import_olive(CONFIGS / "llama_qlora_aml.json", out, str(local_model),
                          [f"tiny_codes_train={train}", f"tiny_codes_eval={evals}"])
    assert result.exit_code == 0, [i.format() for i in result.issues]
    loaded = load_workflow(out)
    steps = _steps(out)
    assert steps["qlora"]["type"] == "qlora" and steps["qlora"]["data"] == "tiny_codes_train"
    assert {k: steps["qlora"][k] for k in ("r", "alpha", "dropout", "compute_dtype", "max_steps", "batch_size",
                                           "gradient_accumulation_steps", "max_length")} == \
        {"r": 64, "alpha": 16, "dropout": 0.1, "compute_dtype": "bfloat16", "max_steps": 150, "batch_size": 2,
         "gradient_accumulation_steps": 8, "max_length": 512}
    # Olive's LoRA output carries its adapter onward: merged before the ModelBuilder export
    assert steps["qlora_merged"] == {"type": "merge_adapter", "adapter": "qlora"}
    assert steps["builder"]["model"] == "qlora_merged" and steps["builder"]["precision"] == "int4"
    azure = loaded.workflow.azureml
    assert (azure.subscription_id, azure.resource_group, azure.workspace, azure.compute) == \
        ("00000000-0000-0000-0000-000000000000", "olive-rg", "olive-ws", "gpu-cluster")
    assert azure.environment.image.startswith("mcr.microsoft.com/azureml/openmpi4.1.0-cuda11.8")
    assert azure.inputs == {"tiny_codes_eval": "azureml://datastores/workspaceblobstore/paths/tiny-codes/eval.jsonl"}
    assert loaded.workflow.target.device == "gpu" and loaded.workflow.target.fallback == "cpu"
    where = [w for w, _ in result.unconverted]
    for item in ("systems.aml_system.hf_token", "azureml_client.keyvault_name", "passes.qlora.eval_data_config",
                 "passes.qlora.training_args.max_grad_norm", "systems.aml_system.aml_docker_config.conda_file_path"):
        assert item in where


def test_qlora_without_local_data_says_why(tmp_path, local_model):
    """Without --data the datastore file is not here: the file is still written, exit 2 says exactly why."""
    out = tmp_path / "qlora.yaml"
    result = import_olive(CONFIGS / "llama_qlora_aml.json", out, str(local_model))
    assert result.exit_code == 2 and out.exists()
    assert [i.path for i in result.issues] == [("steps", "tiny_codes_eval", "path")]
    reasons = dict(result.unconverted)
    assert "--data tiny_codes_eval=FILE" in reasons["data_configs[1] (tiny_codes_eval).data_files"]


def test_pass_without_native_step_becomes_an_olive_step(tmp_path, local_model):
    """Gptq has no native step: `type: olive` with the pass name, its data and its config as written."""
    out = tmp_path / "gptq.yaml"
    result = import_olive(CONFIGS / "phi3_gptq_model_builder.json", out, str(local_model))
    text = out.read_text()
    assert ("  gptq:\n    type: olive\n    pass: Gptq\n    model: base\n    data: wikitext2_train\n"
            "    config: {bits: 4, group_size: 128, sym: true}\n") in text
    assert "# from passes.gptq: Olive's Gptq pass, run as a step" in text
    assert _steps(out)["builder"]["model"] == "gptq"
    # until the olive step type is registered only that step (and the hub subset) may be refused
    assert all("olive" in i.message or i.path == ("steps", "wikitext2_train", "path") for i in result.issues)


def test_broken_json_exits_2_with_line_and_column(tmp_path, capsys):
    broken = tmp_path / "olive.json"
    broken.write_text('{\n  "input_model": {"type": "HfModel",}\n}\n')
    assert cli("import-olive", broken) == 2
    err = capsys.readouterr().err
    assert f"{broken}:2:37: invalid JSON" in err
    assert not broken.with_suffix(".yaml").exists()


def test_not_an_olive_config_and_bad_data_option(tmp_path, capsys):
    config = tmp_path / "olive.json"
    config.write_text('{\n  "passes": {}\n}\n')
    assert cli("import-olive", config) == 2
    assert "`input_model` must be an object" in capsys.readouterr().err
    assert cli("import-olive", CONFIGS / "bert_ptq_cpu.json", "-o", tmp_path / "x.yaml", "--data", "mrpc=x.csv") == 2
    assert "no data config 'mrpc' (its data configs: glue_mrpc)" in capsys.readouterr().err


def test_written_yaml_reads_back_as_the_converted_data(tmp_path):
    """Quoting: templates with newlines, placeholders and numbers survive the round trip."""
    config = read_olive_config(CONFIGS / "llama_qlora_aml.json")
    text, _, _ = convert(config, CONFIGS / "llama_qlora_aml.json", tmp_path)
    data, _ = load_yaml(text, "x.yaml")
    assert data["steps"]["tiny_codes_train"]["template"] == "### Question: {prompt} \n### Answer: {response}"
    assert data["steps"]["tiny_codes_train"]["path"] == "nampdn-ai/tiny-codes"
    assert data["steps"]["qlora"]["learning_rate"] == 0.0002
