"""The Hugging Face toolbox (no step types): model folders, loading models/tokenizers/datasets, chat formatting."""
