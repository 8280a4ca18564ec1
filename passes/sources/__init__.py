"""The source family: the `model` and `load_data` steps (models and data entering a workflow)."""
