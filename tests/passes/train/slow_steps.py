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



def ctrl_c_during_step(monkeypatch, step: int) -> None:
    """Make the Trainer send this process SIGINT (Ctrl-C) at the start of training step `step` (1-based);
    use with the `python_sigint` fixture, so that Python raises KeyboardInterrupt on it."""
    import signal

    trained = transformers.Trainer.training_step

    def interrupted(self, *args, **kwargs):
        if self.state.global_step == step - 1:
            os.kill(os.getpid(), signal.SIGINT)
        return trained(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", interrupted)
