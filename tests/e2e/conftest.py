"""Fixtures of the end-to-end tests."""

import pytest


@pytest.fixture(scope="session")
def minilm_cache(tmp_path_factory):
    """One cache for the MiniLM recipes: their shared steps (model, data, LoRA, export, int8) are built once,
    as a user's shared cache does across workflows."""
    return tmp_path_factory.mktemp("minilm_cache")
