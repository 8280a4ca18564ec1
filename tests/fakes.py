"""Small fake passes for engine tests: no ML library, registered as a plugin (PIPELINE_PLUGINS=tests.fakes)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from passes.base import Pass, PassError
from passes.registry import register_pass
from schemas import Dataset, HfModel, Ref, StepConfig, register_step
from schemas.base import LocalPath


def _count(step: str) -> None:
    counter = os.environ.get("FAKE_COUNTER")
    if counter:
        with open(counter, "a") as f:
            f.write(step + "\n")


@register_step
class FakeSourceConfig(StepConfig):
    """Read a local text file."""

    type: Literal["fake_source"] = Field(description="test source")
    path: LocalPath = Field(description="a text file")
    upper: bool = Field(False, description="upper-case the text")
    verbose: bool = Field(False, description="logging only; not keyed")

    output_kind: ClassVar[str] = "dataset"
    key_exclude: ClassVar[frozenset[str]] = frozenset({"verbose"})


@register_step
class FakeAppendConfig(StepConfig):
    """Append a suffix to the input's text; can fail or sleep."""

    type: Literal["fake_append"] = Field(description="test transform")
    data: Ref[Dataset] = Field(description="input")
    suffix: str = Field("!", description="what to append")
    fail: bool = Field(False, description="raise after writing half the output")
    sleep: float = Field(0.0, ge=0, description="seconds to sleep while working")
    goals_missed: int = Field(0, ge=0, description="report this many missed goals (as evaluate does)")
    goals_fail: bool = Field(False, description="and ask the runner to fail the run for them")

    output_kind: ClassVar[str] = "dataset"


@register_step
class FakeTrainConfig(StepConfig):
    """Turn a dataset into a 'model'."""

    type: Literal["fake_train"] = Field(description="test model producer")
    data: Ref[Dataset] = Field(description="input")
    epochs: int = Field(1, ge=1, le=100, description="epochs")

    output_kind: ClassVar[str] = "hf_model"


@register_step
class FakeJoinConfig(StepConfig):
    """Concatenate several inputs."""

    type: Literal["fake_join"] = Field(description="test fan-in")
    parts: list[Ref[Dataset, HfModel]] = Field(min_length=1, description="inputs")

    output_kind: ClassVar[str] = "dataset"


@register_pass
class FakeSource(Pass[FakeSourceConfig]):
    """Copies the file."""

    config_class = FakeSourceConfig
    version = 1

    def run(self, inputs, ctx):
        _count(ctx.step)
        text = ctx.resolve_path(self.config.path).read_text()
        (ctx.out_dir / "text.txt").write_text(text.upper() if self.config.upper else text)
        return {"summary": f"{len(text)} chars", "chars": len(text)}


@register_pass
class FakeAppend(Pass[FakeAppendConfig]):
    """Appends a suffix."""

    config_class = FakeAppendConfig
    version = int(os.environ.get("FAKE_APPEND_VERSION", "1"))

    def run(self, inputs, ctx):
        _count(ctx.step)
        text = (inputs["data"].path / "text.txt").read_text()
        (ctx.out_dir / "text.txt").write_text(text[: len(text) // 2])
        if self.config.sleep:
            with ctx.progress(10, "sleeping") as bar:
                for _ in range(10):
                    time.sleep(self.config.sleep / 10)
                    bar.advance(1)
        if self.config.fail:
            raise PassError("asked to fail")
        (ctx.out_dir / "text.txt").write_text(text + self.config.suffix)
        goals = {"goals_missed": self.config.goals_missed, "goals_fail": self.config.goals_fail} if self.config.goals_missed else {}
        return {"summary": f"appended {self.config.suffix!r}", "metrics": {"length": len(text) + len(self.config.suffix)}, **goals}


@register_pass
class FakeTrain(Pass[FakeTrainConfig]):
    """Writes a 'model'."""

    config_class = FakeTrainConfig

    def run(self, inputs, ctx):
        _count(ctx.step)
        text = (inputs["data"].path / "text.txt").read_text()
        (ctx.out_dir / "model.txt").write_text(text * self.config.epochs)
        return {"task": "text-classification"}


@register_pass
class FakeJoin(Pass[FakeJoinConfig]):
    """Joins inputs."""

    config_class = FakeJoinConfig

    def run(self, inputs, ctx):
        _count(ctx.step)
        texts = []
        for art in inputs["parts"]:
            for f in sorted(Path(art.path).glob("*.txt")):
                texts.append(f.read_text())
        (ctx.out_dir / "text.txt").write_text("|".join(texts))
        return {"parts": len(texts)}


@register_step
class FakeWorkConfig(StepConfig):
    """Work that can crash, take memory, time itself, and stamp when it starts and ends (runner tests)."""

    type: Literal["fake_work"] = Field(description="test worker")
    data: Ref[Dataset] = Field(description="input")
    sleep: float = Field(0.0, ge=0, description="seconds to sleep while working")
    abort: bool = Field(False, description="os.abort() halfway (after writing half the output)")
    allocate_mb: int = Field(0, ge=0, description="take this much memory (touched), then sleep")
    stamps: str | None = Field(None, description="a folder: write <step>.start and <step>.end there (time.time())")
    wait_for: list[str] = Field(default_factory=list, description="steps whose .start stamp must appear before this ends")
    timing: bool = Field(False, description="measure speed (the runner runs it alone)")

    output_kind: ClassVar[str] = "dataset"

    def runs_alone(self) -> bool:
        return self.timing


@register_pass
class FakeWork(Pass[FakeWorkConfig]):
    """See FakeWorkConfig."""

    config_class = FakeWorkConfig

    def run(self, inputs, ctx):
        from passes.base import THREADS_ENV

        cfg = self.config
        _count(ctx.step)
        stamps = Path(cfg.stamps) if cfg.stamps else None
        if stamps:
            (stamps / f"{ctx.step}.start").write_text(repr(time.time()))
        (ctx.out_dir / "text.txt").write_text("half")
        if cfg.abort:
            os.abort()
        held = [b"\x01" * (10 << 20) for _ in range(cfg.allocate_mb // 10)]  # touched: resident, not just reserved
        deadline = time.time() + 30
        for peer in cfg.wait_for:  # proves overlap: this step cannot end before `peer` has started
            while not (stamps / f"{peer}.start").exists():
                if time.time() > deadline:
                    raise PassError(f"{peer} never started while {ctx.step} ran")
                time.sleep(0.02)
        time.sleep(cfg.sleep)
        text = (inputs["data"].path / "text.txt").read_text()
        (ctx.out_dir / "text.txt").write_text(text + ctx.step)
        if stamps:
            (stamps / f"{ctx.step}.end").write_text(repr(time.time()))
        return {"summary": f"held {len(held) * 10} MB", "threads_env": os.environ.get(THREADS_ENV),
                "omp": os.environ.get("OMP_NUM_THREADS")}
