"""The training family: `lora`, `qlora`, `finetune` and `merge_adapter`, with their data and Trainer glue."""
