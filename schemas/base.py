"""The building blocks of the contract: artifact kinds, references, local paths and the step base class.

Only Pydantic and the standard library are imported here: `pipeline validate`, `plan` and `schema`
must answer without touching an ML library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from typing_extensions import Literal

from .target import StepTarget, Target

#: The artifact kinds a step can produce. Each reference field names the kinds it accepts.
KINDS: tuple[str, ...] = ("hf_model", "adapter", "onnx_model", "dataset", "metrics")

#: Step names: what a reference holds, so they must be plain identifiers (YAML keys, folder names).
STEP_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$"
#: What a reference may name: a step, or one variant of a `matrix:` step, `q[method=int4,per_channel=true]`
#: (the names `pipelines.matrix` gives them; no `[`, `]` or line break inside the brackets).
REF_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}(\[[^\[\]\n]{1,400}\])?$"
StepName = Annotated[str, StringConstraints(pattern=REF_NAME_PATTERN)]


class Kind:
    """Marker base for artifact kinds, used as `Ref[OnnxModel]` in config classes."""

    name: ClassVar[str] = ""


class HfModel(Kind):
    """A Hugging Face model folder (config, weights, tokenizer)."""

    name = "hf_model"


class Adapter(Kind):
    """A PEFT adapter folder plus the label names and training log."""

    name = "adapter"


class OnnxModel(Kind):
    """An ONNX model folder (model.onnx, external data, tokenizer, config)."""

    name = "onnx_model"


class Dataset(Kind):
    """A `datasets.DatasetDict` saved with `save_to_disk`, with a summary."""

    name = "dataset"


class Metrics(Kind):
    """An evaluation: metrics JSON and a report."""

    name = "metrics"


@dataclass(frozen=True)
class RefSpec:
    """Metadata on a field whose value names another step; `kinds` are the kinds it may produce."""

    kinds: tuple[str, ...]


class Ref:
    """`Ref[OnnxModel]` or `Ref[HfModel, OnnxModel]`: a step name whose step must produce one of the kinds."""

    def __class_getitem__(cls, item: Any) -> Any:
        kinds = item if isinstance(item, tuple) else (item,)
        names = tuple(k.name for k in kinds)
        for name in names:
            if name not in KINDS:
                raise TypeError(f"unknown artifact kind {name!r}")
        return Annotated[StepName, RefSpec(names)]


@dataclass(frozen=True)
class PathSpec:
    """Metadata on a field that names a local file or folder (relative to the workflow file).

    `allow_remote` lets the value also be a hub id (`org/name`) or a `pkg://package/sub/path` URI.
    Local paths enter the cache key by the SHA-256 of their content.
    """

    must_exist: bool = True
    allow_remote: bool = False


LocalPath = Annotated[str, PathSpec()]
ModelSource = Annotated[str, PathSpec(allow_remote=True)]
DataSource = Annotated[str, PathSpec(allow_remote=True)]


def field_spec(annotation: Any, spec_type: type) -> tuple[Any, bool] | None:
    """Find a `RefSpec`/`PathSpec` on a field annotation: (spec, is_list) or None.

    Handles `Ref[...]`, `Ref[...] | None`, `list[Ref[...]]` and `list[Ref[...]] | None`.
    """

    def direct(ann: Any) -> Any:
        if get_origin(ann) is Annotated:
            for meta in get_args(ann)[1:]:
                if isinstance(meta, spec_type):
                    return meta
        return None

    spec = direct(annotation)
    if spec is not None:
        return spec, False
    if get_origin(annotation) is Annotated:  # constraints such as min_length wrap the real type
        annotation = get_args(annotation)[0]
    candidates = [annotation]
    if get_origin(annotation) not in (None, Annotated, list):  # Optional / Union
        candidates = [a for a in get_args(annotation) if a is not type(None)]
    for cand in candidates:
        spec = direct(cand)
        if spec is not None:
            return spec, False
        if get_origin(cand) is list:
            (inner,) = get_args(cand)
            spec = direct(inner)
            if spec is not None:
                return spec, True
    return None


class StrictModel(BaseModel):
    """Base for every config object: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True, defer_build=True)


#: How a step is run: in the run's own process, or in a process of its own (a crash or an out-of-memory
#: kill then fails that step alone). `--jobs` > 1 always runs steps in processes of their own.
Isolation = Literal["none", "process"]

#: Fields that say how a step runs, never what it produces: left out of every cache key.
RUN_FIELDS = frozenset({"isolation", "resources"})


class Resources(StrictModel):
    """What a step may use: its memory need (instead of the estimate) and a hard limit."""

    memory_gb: float | None = Field(
        None, gt=0, description="The memory the step needs, in GB; replaces the runner's estimate (input models' "
                                "size times a per-pass factor) in the check made before it starts.")
    max_memory_gb: float | None = Field(
        None, gt=0, description="A hard limit, in GB: the step runs in its own process, which is stopped (and the step "
                                "failed as out of memory) when it uses more; the rest of the run goes on.")


class StepConfig(StrictModel):
    """The base of every step's config. A subclass is one pass's contract.

    Subclasses set `type: Literal["name"]` (the YAML discriminator and registry key), declare their
    references with `Ref[...]`, local paths with `LocalPath`, and the kind they produce in `output_kind`.
    """

    type: str = Field(description="The pass this step runs.")
    target: StepTarget | None = Field(
        None, description="Overrides of the workflow's `target` for this step only (device, providers, options, threads)."
    )
    isolation: Isolation | None = Field(
        None, description="`process`: run the step in a process of its own, so a crash (segfault, abort) or an "
                          "out-of-memory kill fails this step alone; default: the workflow's `isolation`.")
    resources: Resources | None = Field(
        None, description="The step's memory need (`memory_gb`, instead of the estimate) and limit (`max_memory_gb`).")
    output_kind: ClassVar[str] = ""
    #: Fields that do not change the result (logging, progress): left out of the cache key.
    key_exclude: ClassVar[frozenset[str]] = frozenset()
    #: Fields left out of the cache key while empty: a field added later keeps the keys (and cache entries) of
    #: the workflows that do not set it.
    key_omit_when_empty: ClassVar[frozenset[str]] = frozenset()
    #: Whether the result depends on the workflow's target (device / providers); if so it is keyed.
    uses_target: ClassVar[bool] = False
    #: Whether, on a cpu target, the result depends on the CPU instruction set built for (`target.isa`).
    uses_isa: ClassVar[bool] = False

    @classmethod
    def step_type(cls) -> str:
        """The `type` string of this config class (its Literal's single value)."""
        (value,) = get_args(cls.model_fields["type"].annotation)
        return value

    @classmethod
    def reference_fields(cls) -> dict[str, tuple[RefSpec, bool]]:
        """The fields that name other steps: {field: (RefSpec, is_list)}."""
        out = {}
        for name, info in cls.model_fields.items():
            found = field_spec(_annotation(info), RefSpec)
            if found:
                out[name] = found
        return out

    @classmethod
    def path_fields(cls) -> dict[str, tuple[PathSpec, bool]]:
        """The fields that name local files or folders: {field: (PathSpec, is_list)}."""
        out = {}
        for name, info in cls.model_fields.items():
            found = field_spec(_annotation(info), PathSpec)
            if found:
                out[name] = found
        return out

    def references(self) -> dict[str, list[str]]:
        """This step's references as {field: [step names]} (empty fields left out)."""
        out: dict[str, list[str]] = {}
        for name, (_, is_list) in self.reference_fields().items():
            value = getattr(self, name)
            if value is None:
                continue
            out[name] = list(value) if is_list else [value]
        return out

    def reference_kinds(self, field: str) -> tuple[str, ...]:
        """The kinds this step's reference `field` accepts; its `Ref[...]` kinds unless the instance narrows them.

        An `olive` step's `model` takes what its Olive pass takes (Gptq: an hf_model only), which its
        field's type (`Ref[HfModel, OnnxModel]`) cannot say.
        """
        return self.reference_fields()[field][0].kinds

    def runs_alone(self) -> bool:
        """Whether the step measures speed (latency, tokens/s): with `--jobs`, nothing else runs while it does."""
        return False

    def target_issues(self, target: Target) -> list[tuple[tuple, str, str | None]]:
        """Problems of this step on `target` (its effective target), found before anything runs.

        Returns (field path, message, hint) triples; the default has none. QuantizeConfig, for one,
        needs calibration data when an npu target makes it pick static QDQ.
        """
        return []

    def with_defaults_from(self, steps: dict[str, "StepConfig"]) -> "StepConfig":
        """Fill references whose default comes from another step's config (see MergeAdapterConfig).

        Called by the graph builder once every step has validated; the result is what runs and
        what is keyed, so the derived edge is as explicit as a written one.
        """
        return self


def _annotation(info: Any) -> Any:
    """The field's annotation with its metadata re-attached (Pydantic strips `Annotated`)."""
    if info.metadata:
        return Annotated[(info.annotation, *info.metadata)]
    return info.annotation


def step_output_kind(config: StepConfig) -> str:
    """The kind this step instance produces: `produced_kind()` where the config has one, else `output_kind`.

    Most step types produce one kind whatever their fields; an `olive` step produces what its pass
    produces (Gptq an hf_model, ModelBuilder an onnx_model). Read every instance's kind through here.
    """
    produced = getattr(config, "produced_kind", None)
    return produced() if callable(produced) else config.output_kind
