"""passes.hf.folders: the one reader of a model folder's config.json."""

from __future__ import annotations

import pytest

from passes.base import PassError
from passes.hf.folders import read_config


def test_read_config_missing_is_empty_and_malformed_names_the_file(tmp_path):
    assert read_config(tmp_path) == {}
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    assert read_config(tmp_path) == {"model_type": "bert"}
    (tmp_path / "config.json").write_text('{"model_type": ')
    with pytest.raises(PassError, match=r"cannot read .*config\.json"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(PassError, match="not a JSON object"):
        read_config(tmp_path)
