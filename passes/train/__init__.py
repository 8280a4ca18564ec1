"""The training family: `lora`, `qlora`, `finetune`, `merge_adapter` and `tune_scales`, with their data and Trainer glue."""
