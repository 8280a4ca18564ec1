"""Resumable training: where checkpoints live, which one to resume from, and a Ctrl-C that saves first.

The runner gives a training step a checkpoint folder keyed by the step's cache key (`ctx.checkpoint_dir`,
outside the cache's `tmp/` cleanup). The Trainer writes full checkpoints there (weights, optimizer,
scheduler, RNG states, trainer state); a run killed during training finds them on the next run of the
same key and the Trainer goes on from the last complete one (`resume_from_checkpoint`), with the same
data order and random state, so it ends where an uninterrupted run ends. The runner removes the folder
once the step is committed.

Ctrl-C (or SIGTERM) during training does not stop the process at once: `deferred_interrupts` notes the
signal, `StopOnInterrupt` has the Trainer save a checkpoint at the end of the current step and stop, and
the signal is then raised as usual (a second Ctrl-C stops at once).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

#: Checkpoint folders as the Trainer names them.
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
#: Written last by the Trainer's `_save_checkpoint`: a folder without it was cut short.
TRAINER_STATE = "trainer_state.json"


def last_checkpoint(folder: Path | None, log: Callable[[str], None]) -> tuple[Path, int, int] | None:
    """(folder, step, max steps) of the newest complete checkpoint under `folder`, or None.

    Incomplete checkpoints (a kill while saving) are removed, so the Trainer's rotation never counts them.
    """
    if folder is None or not folder.is_dir():
        return None
    found = sorted(((int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name))), reverse=True)
    for step, path in found:
        try:
            state = json.loads((path / TRAINER_STATE).read_text())
        except (OSError, ValueError):
            log(f"checkpoint {path.name} is incomplete (the run stopped while saving it): removed")
            shutil.rmtree(path, ignore_errors=True)
            continue
        return path, int(state.get("global_step", step)), int(state.get("max_steps") or 0)
    return None


@dataclass
class InterruptFlag:
    """Which signal (SIGINT / SIGTERM) arrived while training, if any."""

    signum: int | None = None


def _replay(signum: int, handler: Any) -> None:
    """Deliver `signum` as if the deferral had not been there: call the handler that was installed before."""
    if callable(handler):
        handler(signum, None)  # Python's SIGINT handler raises KeyboardInterrupt; the runner's SIGTERM one Terminated
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[InterruptFlag]:
    """Within the block, the first SIGINT / SIGTERM only sets the flag; it is raised when the block ends.

    A second signal restores the previous handlers and is delivered at once. Outside the main thread (where
    no handler can be installed) the flag is never set and signals act as usual.
    """
    flag = InterruptFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def note(signum: int, frame: Any) -> None:
        if flag.signum is not None:
            restore()
            _replay(signum, previous[signum])
            return
        flag.signum = signum

    for sig in previous:
        signal.signal(sig, note)
    try:
        yield flag
    finally:
        restore()
    if flag.signum is not None:  # only reached when the block ended normally
        _replay(flag.signum, previous[flag.signum])


def stop_on_interrupt_callback(flag: InterruptFlag, log: Callable[[str], None]) -> Any:
    """A TrainerCallback: once `flag` is set, save a checkpoint at the end of the step and stop training."""
    from transformers import TrainerCallback

    class StopOnInterrupt(TrainerCallback):
        """Save and stop at the end of the step during which a stop was asked for."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if flag.signum is not None and not control.should_training_stop:
                log(f"interrupted: saving a checkpoint at step {state.global_step} of {state.max_steps}, then stopping "
                    "(the next run resumes from it; press Ctrl-C again to stop at once)")
                control.should_save = True
                control.should_training_stop = True

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            # Leaving the epoch early is not its end: no evaluation (it could change which checkpoint is best).
            if flag.signum is not None:
                control.should_evaluate = False
                control.should_save = False

    return StopOnInterrupt()


__all__ = ["InterruptFlag", "deferred_interrupts", "last_checkpoint", "stop_on_interrupt_callback"]
