"""`load_data`: local (or hub) data into a split, cleaned, deterministic dataset."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ..base import DataSource, StepConfig
from ..registry import register_step

SplitName = Literal["train", "validation", "test"]
#: Conversation formats `load_data` reads (from JSON, JSONL or Parquet; the file type goes by its extension).
CHAT_FORMATS = ("messages", "sharegpt", "alpaca")


@register_step
class LoadDataConfig(StepConfig):
    """Load a CSV, TSV, JSON, JSONL, Parquet or text file with `datasets`, map columns, clean and split."""

    type: Literal["load_data"] = Field(description="Load and split a dataset.")
    path: DataSource = Field(description="A local file or folder (relative to the workflow file) or a hub dataset id.")
    format: Literal["auto", "csv", "tsv", "json", "jsonl", "parquet", "text", "messages", "sharegpt", "alpaca"] = Field(
        "auto", description="The file format; `auto` goes by the file extension. Chat data: `messages` (OpenAI "
        "`messages` lists of role/content), `sharegpt` (`conversations` of from/value) or `alpaca` "
        "(instruction/input/output) in JSON, JSONL or Parquet; with `auto` and no column mapping, detected by its columns."
    )
    text: str | None = Field(None, description="The column holding the input text (classification).")
    text_pair: str | None = Field(None, description="A second text column (sentence-pair tasks).")
    label: str | None = Field(None, description="The column holding the label (names or integer ids).")
    label_names: list[str] | None = Field(
        None, min_length=2, description="Label names in id order; default: the sorted distinct labels."
    )
    prompt: str | None = Field(None, description="The instruction column (instruction data).")
    response: str | None = Field(None, description="The response column (instruction data).")
    template: str | None = Field(
        None, description="A prompt template with `{column}` placeholders, instead of `prompt`."
    )
    chat_template: bool = Field(
        False,
        description="Format instruction data with the model's own chat template (user turn = the prompt, "
        "assistant turn = the response) when it is tokenized for training and evaluation.",
    )
    system_prompt: str | None = Field(
        None, description="A system message put before every prompt (with `chat_template: true`), or before every "
        "conversation of chat data that has no system turn of its own."
    )
    drop_empty: bool = Field(True, description="Drop rows whose mapped text columns are empty.")
    drop_duplicates: bool = Field(True, description="Drop exact duplicate rows (after column mapping).")
    max_chars: int | None = Field(None, ge=1, description="Drop rows whose text is longer than this.")
    splits: dict[SplitName, float] | Literal["existing"] = Field(
        default_factory=lambda: {"train": 0.7, "validation": 0.1, "test": 0.2},
        description="Split ratios (summing to 1), or `existing` to keep the splits the source already has.",
    )
    stratify: bool = Field(False, description="Keep label proportions equal across splits.")
    balance: Literal["undersample", "oversample"] | None = Field(
        None, description="Balance the train split's labels by dropping or repeating examples."
    )
    max_samples: int | None = Field(None, ge=1, description="Keep at most this many rows (after cleaning).")
    seed: int = Field(42, description="Seed for shuffling, splitting and balancing.")

    output_kind: ClassVar[str] = "dataset"

    @field_validator("splits")
    @classmethod
    def _check_splits(cls, splits: dict | str) -> dict | str:
        if isinstance(splits, dict):
            if "train" not in splits:
                raise ValueError("splits must include `train`")
            if any(v <= 0 for v in splits.values()):
                raise ValueError("every split ratio must be greater than 0")
            total = sum(splits.values())
            if abs(total - 1.0) > 1e-6:
                raise ValueError(f"split ratios must sum to 1 (they sum to {total:g})")
        return splits

    def is_chat(self) -> bool:
        """Conversations (named by `format`, or detected: `auto` with no column mapped) rather than columns."""
        mapped = any(v is not None for v in (self.text, self.prompt, self.template, self.response, self.label))
        return self.format in CHAT_FORMATS or (self.format == "auto" and not mapped)

    @model_validator(mode="after")
    def _check(self) -> "LoadDataConfig":
        if self.format in CHAT_FORMATS:
            mapped = [f for f in ("text", "text_pair", "label", "label_names", "prompt", "response", "template")
                      if getattr(self, f) is not None]
            if mapped:
                raise ValueError(f"`format: {self.format}` reads whole conversations: drop {', '.join(f'`{f}`' for f in mapped)}")
            if self.stratify or self.balance is not None:
                raise ValueError("chat data has no labels: drop `stratify` and `balance`")
            return self
        if self.is_chat():
            if self.text_pair is not None or self.label_names is not None or self.stratify or self.balance is not None:
                raise ValueError("map at least one text column: `text` (classification) or `prompt`/`template` (instructions)")
            return self  # chat data, its format detected by its columns when it is read
        if self.text is None and self.prompt is None and self.template is None:
            raise ValueError("map at least one text column: `text` (classification) or `prompt`/`template` (instructions), "
                             "or read chat data (`format: messages | sharegpt | alpaca`)")
        if self.text is not None and (self.prompt is not None or self.template is not None):
            raise ValueError("give `text` (classification) or `prompt`/`template` (instructions), not both")
        if self.text_pair is not None and self.text is None:
            raise ValueError("`text_pair` needs a `text` column")
        if self.label_names is not None and self.label is None:
            raise ValueError("`label_names` needs a `label` column")
        if self.prompt is not None and self.template is not None:
            raise ValueError("give `prompt` or `template`, not both")
        if (self.chat_template or self.system_prompt is not None) and self.prompt is None and self.template is None:
            raise ValueError("`chat_template` and `system_prompt` format instruction data: set `prompt` or `template`")
        if self.system_prompt is not None and not self.chat_template:
            raise ValueError("`system_prompt` goes into the chat template: set `chat_template: true` as well")
        if self.stratify and self.label is None:
            raise ValueError("`stratify` needs a `label` column")
        if self.balance is not None and self.label is None:
            raise ValueError("`balance` needs a `label` column")
        return self
