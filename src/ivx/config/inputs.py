"""The experiment's inputs: `model:` (which causal LM) and `prompts:` (inline records or a file/dataset).

Pydantic models named after the YAML keys they validate; `schema` re-exports them with every other section.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, StrictBool, field_validator, model_validator

from ivx.config.settings import Strict


class ModelSpec(Strict):
    """`model:` which causal LM to load."""

    name: str = Field(description="Hub id (gpt2), a local directory, or a bundled model (ivx-toy).")
    revision: str | None = Field(None, description="Hub branch, tag or commit.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weights dtype; auto = float32 on CPU."
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    device_map: Literal["auto"] | dict[str, str | int] | None = Field(
        None,
        description="Shard the model over several devices with accelerate (pip install "
        "'ivx-interventions[gpu]'): auto (fill the GPUs in order, then CPU, then disk), or a map "
        "from module name to cpu, cuda:N, N or disk. Replaces `device`.",
    )
    trust_remote_code: StrictBool = Field(
        False,
        description="Allow the model's own code from the Hub. Only the YAML booleans true/false are "
        "accepted (not yes, on, 1 or 'true'): running downloaded code must be asked for exactly.",
    )
    bos: Literal["auto"] | bool = Field(
        "auto",
        description="Put a BOS token first in every prompt: auto = as the tokenizer does by default "
        "(Llama/Mistral/Gemma yes, GPT-2/Pythia no), or force true/false. Positions count it.",
    )

    @field_validator("trust_remote_code", mode="before")
    @classmethod
    def _strict_trust(cls, value: Any) -> Any:
        if not isinstance(value, bool):
            raise ValueError(
                f"trust_remote_code accepts only true or false (got {value!r}): running a model's own "
                "code must be asked for exactly"
            )
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.match(r"^(auto|cpu|mps|cuda(:\d+)?)$", value):
            raise ValueError(f"device {value!r} must be auto, cpu, mps, cuda or cuda:N")
        return value

    @field_validator("device_map")
    @classmethod
    def _device_map(cls, value: Any) -> Any:
        for module, where in value.items() if isinstance(value, dict) else ():
            if isinstance(where, bool) or not re.match(r"^(cpu|disk|cuda(:\d+)?|\d+)$", str(where)):
                raise ValueError(
                    f"device_map[{module!r}] = {where!r} must be cpu, disk, cuda:N or a GPU index N"
                )
        return value

    @model_validator(mode="after")
    def _one_placement(self) -> ModelSpec:
        if self.device_map is not None and self.device != "auto":
            raise ValueError(
                f"device {self.device!r} and device_map are both set; keep one "
                "(device_map places every module)"
            )
        return self


class PromptRecord(Strict):
    """One prompt record: the base run, optional counterfactual source run, answers, subject."""

    base: str = Field(description="The prompt the intervention is applied to (not blank).")
    source: str | None = Field(None, description="Counterfactual prompt activations are copied from.")
    target: str | None = Field(
        None,
        description="Expected answer, e.g. ' Paris' (with its space); scored as the first token that "
        "follows base when base + target is tokenized.",
    )
    foil: str | None = Field(None, description="Alternative answer for logit differences.")
    subject: str | None = Field(
        None,
        description="Substring of base, matched on token and word boundaries; positions `subject*` use it.",
    )
    subject_occurrence: int | None = Field(
        None,
        ge=1,
        description="Which occurrence of subject in base (1 = first) when it occurs more than once.",
    )

    @field_validator("base")
    @classmethod
    def _base_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("base is empty; a prompt needs at least one token")
        return value

    @model_validator(mode="after")
    def _subject_in_base(self) -> PromptRecord:
        if self.subject is not None and self.subject not in self.base:
            raise ValueError(f"subject {self.subject!r} does not occur in base {self.base!r}")
        if self.subject_occurrence is not None and self.subject is None:
            raise ValueError("subject_occurrence needs a `subject`")
        return self


class PromptFile(Strict):
    """`prompts: {file: ...}` or `{dataset: ...}`: prompt records from a file or a `datasets` dataset."""

    file: str | None = Field(
        None,
        description="JSONL file of records (relative to the config file), or a JSON array such as ROME's "
        "known_1000.json or CounterFact.",
    )
    dataset: str | None = Field(
        None,
        description="A Hugging Face `datasets` name, or a local directory (save_to_disk, JSON or Parquet "
        "files); needs `pip install ivx-interventions[datasets]`.",
    )
    split: str = Field("train", description="Dataset split.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Record field → column name (dotted for nested columns), e.g. {target: target_true}.",
    )
    format: Literal["auto", "records", "known_1000", "counterfact"] = Field(
        "auto",
        description="Row layout: records (ivx's fields), known_1000 (ROME: prompt, subject, attribute), "
        "counterfact (requested_rewrite: target_true → target, target_new → foil); auto detects it.",
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N records (reading stops there).")

    @model_validator(mode="after")
    def _one_source(self) -> PromptFile:
        if (self.file is None) == (self.dataset is None):
            raise ValueError("give either `file` or `dataset`")
        fields = PromptRecord.model_fields
        for key in self.columns:
            if key not in fields:
                raise ValueError(f"columns key {key!r} is not a record field; allowed: {', '.join(fields)}")
        return self
