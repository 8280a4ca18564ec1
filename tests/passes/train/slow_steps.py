"""A test plugin (`PIPELINE_PLUGINS=tests.passes.train.slow_steps`): every Trainer step sleeps
`SLOW_TRAINING_STEP_S` seconds, so that a test can stop a tiny model's training between two checkpoints."""

from __future__ import annotations

import os
import time

import transformers

_step = transformers.Trainer.training_step


def _slow_step(self, *args, **kwargs):
    time.sleep(float(os.environ.get("SLOW_TRAINING_STEP_S", "0")))
    return _step(self, *args, **kwargs)


transformers.Trainer.training_step = _slow_step
