"""Fixtures of the ONNX family's tests."""

import pytest


@pytest.fixture
def onnx_artifact(tiny_onnx_classifier):
    """The tiny classifier exported once per session (an onnx_model artifact; passes write elsewhere)."""
    return tiny_onnx_classifier
