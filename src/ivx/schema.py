"""The experiment-file schema: pydantic models named after the YAML keys they validate.

Pure data, no torch. Fields that may bind to a sweep axis accept a `$axis` string; the plan
stage substitutes the axis values and checks the concrete values against the model.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeInt,
    StrictBool,
    Tag,
    field_validator,
    model_validator,
)

COMPONENT_NAMES: tuple[str, ...] = (
    "embedding",
    "block_input",
    "block_output",
    "attention_input",
    "attention_output",
    "attention_value_output",
    "head_attention_value_output",
    "query_output",
    "key_output",
    "value_output",
    "head_query_output",
    "head_key_output",
    "head_value_output",
    "mlp_input",
    "mlp_activation",
    "mlp_output",
    "residual_mid",
)

KINDS: tuple[str, ...] = (
    "vanilla",
    "addition",
    "subtraction",
    "zero",
    "noise",
    "scale",
    "collect",
    "set",
    "rotated_space",
    "low_rank_rotated_space",
    "boundless_das",
    "sigmoid_mask",
)
TRAINABLE_KINDS: frozenset[str] = frozenset(
    {"rotated_space", "low_rank_rotated_space", "boundless_das", "sigmoid_mask"}
)

# pyvene's class names are accepted as aliases of ivx's kinds.
KIND_ALIASES: dict[str, str] = {
    "VanillaIntervention": "vanilla",
    "AdditionIntervention": "addition",
    "SubtractionIntervention": "subtraction",
    "ZeroIntervention": "zero",
    "NoiseIntervention": "noise",
    "CollectIntervention": "collect",
    "RotatedSpaceIntervention": "rotated_space",
    "LowRankRotatedSpaceIntervention": "low_rank_rotated_space",
    "BoundlessRotatedSpaceIntervention": "boundless_das",
    "SigmoidMaskRotatedSpaceIntervention": "sigmoid_mask",
}

POSITION_KEYWORDS: tuple[str, ...] = ("last", "all", "subject", "subject_first", "subject_last")

METRICS: tuple[str, ...] = (
    "target_prob",
    "target_logit",
    "target_rank",
    "logit_diff",
    "logit_diff_norm",
    "kl",
    "indirect_effect",
    "indirect_effect_norm",
    "top_k",
)

# per-(seed, prompt, sample) noise seeds are seed × ~10^10 + ...: they must stay below 2^64
MAX_SEED = 2**30 - 1
MAX_ROWS_PER_BATCH = 1_000_000

REF = re.compile(r"^\$[A-Za-z_][A-Za-z0-9_]*$")


def is_ref(value: Any) -> bool:
    """True when `value` is a `$axis` reference string."""
    return isinstance(value, str) and bool(REF.match(value))


def _check_position_atom(value: Any) -> None:
    if isinstance(value, bool):
        raise ValueError(f"position {value!r} must be an integer or one of {list(POSITION_KEYWORDS)}")
    if isinstance(value, int) or is_ref(value):
        return
    if isinstance(value, str):
        if value in POSITION_KEYWORDS:
            return
        import difflib

        near = difflib.get_close_matches(value, POSITION_KEYWORDS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ValueError(
            f"unknown position {value!r}{hint}; expected an integer (negative counts from the end), "
            f"{', '.join(POSITION_KEYWORDS)}, a list of these, or a $axis reference"
        )
    raise ValueError(f"position {value!r} must be an integer, a keyword or a list")


def check_position(value: Any) -> Any:
    """Validate a position spec: int, keyword, `$axis`, or a non-empty list of ints/keywords."""
    if isinstance(value, list):
        if not value:
            raise ValueError("position list is empty")
        for atom in value:
            _check_position_atom(atom)
        return value
    _check_position_atom(value)
    return value


def _check_layer(value: Any) -> Any:
    if is_ref(value):
        return value
    items = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not value:
        raise ValueError("layer list is empty")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(
                f"layer {item!r} must be an integer (negative counts from the last layer), "
                "a list of integers, or a $axis reference"
            )
    return value


def _check_head(value: Any) -> Any:
    if value is None or is_ref(value):
        return value
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise ValueError(f"head {item!r} must be a non-negative integer, a list, or a $axis reference")
    return value


def _check_component(value: Any) -> Any:
    if is_ref(value):
        return value
    if not isinstance(value, str):
        raise ValueError(f"component must be a string, got {value!r}")
    if value not in COMPONENT_NAMES:
        import difflib

        near = difflib.get_close_matches(value, COMPONENT_NAMES, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ValueError(f"unknown component {value!r}; {hint}valid: {', '.join(COMPONENT_NAMES)}")
    return value


def _check_kind(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"kind must be a string, got {value!r}")
    if value in KIND_ALIASES:
        return KIND_ALIASES[value]
    if value in KINDS:
        return value
    import difflib

    near = difflib.get_close_matches(value, list(KINDS) + list(KIND_ALIASES), n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    raise ValueError(f"unknown intervention kind {value!r}; {hint}valid: {', '.join(KINDS)}")


def _check_positive(value: Any) -> Any:
    if value is None or is_ref(value):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{value!r} must be a positive integer or a $axis reference")
    return value


SEVERABLE: tuple[str, ...] = ("mlp_output", "attention_output")


def _check_sever(value: Any) -> Any:
    if value is None or value == "none":
        return None
    if is_ref(value) or value in SEVERABLE:
        return value
    raise ValueError(f"sever {value!r} must be one of {', '.join(SEVERABLE)}, none, or a $axis reference")


Sever = Annotated[Any, AfterValidator(_check_sever)]
PositiveOrRef = Annotated[Any, AfterValidator(_check_positive)]
Position = Annotated[Any, AfterValidator(check_position)]
Layer = Annotated[Any, AfterValidator(_check_layer)]
Head = Annotated[Any, AfterValidator(_check_head)]
Component = Annotated[Any, AfterValidator(_check_component)]
Kind = Annotated[Any, AfterValidator(_check_kind)]


def check_window(value: Any) -> Any:
    """A layer window: a size ≥ 1, or {component: size} with real component names."""
    import difflib

    items = value.items() if isinstance(value, dict) else [("window", value)]
    for key, size in items:
        if size is not None and size < 1:
            raise ValueError(f"window must be ≥ 1 (got {size} for {key})")
        if isinstance(value, dict) and key not in COMPONENT_NAMES:
            near = difflib.get_close_matches(key, COMPONENT_NAMES, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"window key {key!r} is not a component name{hint}")
    return value


class Strict(BaseModel):
    """Base for every schema section: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelSpec(Strict):
    """`model:` which causal LM to load."""

    name: str = Field(description="Hub id (gpt2), a local directory, or a bundled model (ivx-toy).")
    revision: str | None = Field(None, description="Hub branch, tag or commit.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weights dtype; auto = float32 on CPU."
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
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


class Corrupt(Strict):
    """`corrupt:` how the base run is corrupted before restoring sites (causal tracing)."""

    kind: Literal["noise", "replace"] = Field(
        "noise", description="noise: Gaussian noise on token embeddings; replace: swap the subject."
    )
    positions: Position = Field("subject", description="Which token embeddings get the noise.")
    scale: float = Field(3.0, gt=0, description="Noise std = scale × sigma.")
    samples: int = Field(10, ge=1, le=1000, description="Independent noise draws per prompt.")
    sigma: float | Literal["subjects", "embeddings"] = Field(
        "subjects",
        description="subjects: std of the subjects' token embeddings over the dataset; "
        "embeddings: std of the whole embedding matrix; or a fixed number > 0.",
    )

    @field_validator("sigma", mode="before")
    @classmethod
    def _sigma(cls, value: Any) -> Any:
        if value in ("subjects", "embeddings"):
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
            raise ValueError(f"sigma {value!r} must be 'subjects', 'embeddings' or a finite number > 0")
        return value


class Contrast(Strict):
    """`contrast:` a steering vector from activation differences (ActAdd / mean difference)."""

    positive: str | None = Field(None, description="Prompt whose activation is added (ActAdd).")
    negative: str | None = Field(None, description="Prompt whose activation is subtracted.")
    file: str | None = Field(
        None, description="JSONL of {positive, negative} records: mean difference over the sets."
    )
    position: Literal["last", "mean"] = Field(
        "last", description="Activation of the last token, or the mean over tokens."
    )
    normalize: bool = Field(False, description="Scale the difference to unit norm first.")

    @model_validator(mode="after")
    def _one_source(self) -> Contrast:
        pair = self.positive is not None and self.negative is not None
        if pair == (self.file is not None):
            raise ValueError("give either `positive` and `negative` prompts, or a `file` of pairs")
        return self


class Receiver(Strict):
    """One entry of `interventions[].receivers`: a component whose input a path patch reaches."""

    component: Component = Field(description="Receiving component, e.g. head_query_output, mlp_input.")
    layer: int = Field(description="Layer index (negative counts from the last layer).")
    head: NonNegativeInt | list[NonNegativeInt] | None = Field(
        None, description="Head(s) of head_* receivers."
    )
    position: Position = Field("all", description="Positions of the receiver patched (base prompt).")


class Intervention(Strict):
    """One entry of `interventions:`: what to do at which site."""

    kind: Kind = Field(description="vanilla, addition, subtraction, zero, noise, scale, collect, set, ...")
    name: str | None = Field(None, description="Name used for saved tensors; default iv<index>.")
    component: Component = Field("block_output", description="Component name (pyvene vocabulary).")
    layer: Layer = Field(0, description="Layer index, list of layers, or $axis.")
    position: Position = Field("all", description="Token position(s) in the base prompt.")
    head: Head = Field(None, description="Head index/indices for head_* components.")
    window: int | dict[str, int] | None = Field(
        None,
        description="Intervene on a window of this many layers centred on `layer` (ROME: 10 for "
        "MLP/attention); a mapping gives a window per component, e.g. {mlp_output: 10}.",
    )
    source: Literal["auto", "base", "source"] = Field(
        "auto",
        description="Run to copy from: base = the clean base prompt, source = the record's source "
        "prompt; auto = source if records have one, else base.",
    )
    source_position: Position | None = Field(
        None, description="Positions in the source run (default: same as `position`)."
    )
    subspace: list[int] | None = Field(None, description="Only these dimensions are changed.")
    value: float | None = Field(
        None, description="scale: factor; noise: std multiplier (default 3) of the embedding std."
    )
    coefficient: float = Field(1.0, description="Multiplier of the vector for addition/subtraction/set.")
    vector: str | None = Field(
        None, description="File (.safetensors/.pt) or bundle (path, hf://user/name) with the vector."
    )
    interchange_dim: PositiveOrRef = Field(None, description="rotated_space: dims interchanged.")
    low_rank_dimension: PositiveOrRef = Field(None, description="low-rank DAS: basis size k.")
    bundle: str | None = Field(None, description="Trained parameters: bundle path or hf://user/name.")
    contrast: Contrast | None = Field(
        None, description="Build the vector from contrast prompts (steering) instead of `vector`."
    )
    on: Literal["prompt", "generated", "all"] = Field(
        "prompt",
        description="ivx generate: intervene on prompt positions, on every generated token, or both.",
    )
    sever: Sever = Field(
        None,
        description="Causal tracing with severed paths: hold this component (mlp_output or "
        "attention_output) of every later layer at its corrupted value (all positions) while "
        "restoring this site; none, or a $axis to compare them (ROME Fig. 3).",
    )
    temperature: list[float] | None = Field(
        None, description="boundless_das: boundary temperature schedule [start, end]."
    )
    receivers: list[Receiver] | None = Field(
        None,
        description="Path patching: this (vanilla) intervention is the sender; only its direct effect "
        "on these receivers' inputs is patched, everything else frozen at the base run (see README).",
    )

    @field_validator("window")
    @classmethod
    def _window(cls, value: int | dict[str, int] | None) -> int | dict[str, int] | None:
        return check_window(value)

    @field_validator("subspace")
    @classmethod
    def _subspace(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(v < 0 for v in value)):
            raise ValueError("subspace must be a non-empty list of non-negative dimension indices")
        return value

    @model_validator(mode="after")
    def _kind_fields(self) -> Intervention:
        if self.kind == "set" and self.vector is None and self.contrast is None:
            raise ValueError("kind 'set' needs `vector` (a .safetensors/.pt file or a bundle) or `contrast`")
        if self.vector is not None and self.contrast is not None:
            raise ValueError("give `vector` or `contrast`, not both")
        if self.kind == "scale" and self.value is None:
            raise ValueError("kind 'scale' needs `value` (the factor)")
        if (
            self.head is not None
            and not is_ref(self.component)
            and not str(self.component).startswith("head_")
        ):
            raise ValueError(
                f"`head` only applies to head_* components, not {self.component!r} "
                "(e.g. head_attention_value_output)"
            )
        return self


class Output(Strict):
    """`output:` where and what to write."""

    root: str = Field("runs", description="Directory the timestamped run directory is created in.")
    logits: Literal["none", "last", "all"] = Field(
        "last", description="Which logits go into tensors.safetensors."
    )
    plots: bool = Field(True, description="Write heatmaps into plots/.")
    top_k: int = Field(5, ge=1, le=100, description="Tokens listed by the top_k metric.")


class Batch(Strict):
    """`batch:` how many sequences go through the model at once."""

    size: int | Literal["auto"] = Field("auto", description="Rows per forward pass (≥ 1), or auto.")

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ROWS_PER_BATCH:
            raise ValueError(f"batch.size {value!r} must be 'auto' or an integer 1..{MAX_ROWS_PER_BATCH:,}")
        return value

    memory_gb: float = Field(2.0, gt=0, description="Activation-memory budget for auto.")
    prefix_reuse: bool = Field(
        True,
        description="Continue cells from the KV cache of the unpatched prefix (a patch at position "
        "p leaves positions < p unchanged), instead of recomputing it.",
    )
    layer_reuse: bool = Field(
        True,
        description="With prefix reuse, also skip the blocks below the first edited layer: their "
        "outputs equal the baseline run's, which is kept per prompt.",
    )
    defer_head: bool = Field(
        True,
        description="Run cells through the backbone and unembed many cells' last positions at "
        "once (used only where a probe shows logits are exactly lm_head(backbone output)).",
    )
    skip_noop: bool = Field(
        True,
        description="Do not run cells whose every edit writes the value the site already holds, e.g. "
        "restoring a clean state before the first corrupted token (a causal model's clean and "
        "corrupted runs agree there): their outputs are the corrupted baseline's.",
    )


class Trace(Strict):
    """`trace:` causal-tracing analysis over a dataset of facts (ROME protocol)."""

    select_correct: bool = Field(
        False, description="Keep only facts whose greedy top-1 prediction is the target."
    )
    plots_per_fact: int = Field(3, ge=0, description="Per-fact heatmaps written (dataset mean always).")
    window: dict[str, int] = Field(
        default_factory=lambda: {"mlp_output": 10, "attention_output": 10},
        description="Layer window of vanilla restorations that set no `window` of their own, per "
        "component (ROME: 10 for MLP and attention outputs, hidden states one layer); clipped at "
        "the ends. {} restores single layers.",
    )

    @field_validator("window")
    @classmethod
    def _trace_window(cls, value: dict[str, int]) -> dict[str, int]:
        return check_window(value)


class Generate(Strict):
    """`generate:` settings of `ivx generate`."""

    max_new_tokens: int = Field(20, ge=1, le=4096, description="Tokens to generate per prompt.")
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling threshold.")
    top_k: int | None = Field(None, ge=1, description="Sample from the k most likely tokens.")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="Sampling seed (default: the experiment seed)."
    )
    stop: list[str] = Field(default_factory=list, description="Stop when any of these strings appears.")
    num_return_sequences: int = Field(1, ge=1, le=64, description="Continuations per prompt.")
    use_cache: bool = Field(True, description="Decode with the KV cache (results are identical).")
    stream: bool = Field(False, description="Print tokens as they are generated (single prompt).")


class Train(Strict):
    """`train:` interchange intervention training (DAS) settings of `ivx train`."""

    epochs: int = Field(5, ge=1, description="Passes over the training records.")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(32, ge=1, description="Records per optimisation step.")
    eval_split: float = Field(0.2, gt=0, lt=1, description="Fraction of records held out for IIA.")
    patience: int | None = Field(2, ge=1, description="Stop after this many epochs without IIA gain.")
    data: Literal["records", "city_swap"] = Field(
        "records", description="records: the prompts' (base, source, target); city_swap: generated."
    )
    max_records: int | None = Field(None, ge=2, description="Use at most this many records.")


class Verify(Strict):
    """`attribution.verify:` re-run some cells with exact patching and compare."""

    top_k: int = Field(10, ge=0, description="Re-run the N cells with the largest |estimate| exactly.")
    random: int = Field(10, ge=0, description="Also re-run this many other cells, drawn at random (seeded).")


class Attribution(Strict):
    """`attribution:` settings of `method: attribution` (AtP / AtP*, Kramár et al. 2024)."""

    qk_fix: bool = Field(
        False,
        description="head query/key sites: compute the attention pattern's change exactly (softmax "
        "recomputed per query position) and linearise only after it (AtP*; GPT-2 layout only).",
    )
    grad_drop: bool = Field(
        False,
        description="Also score cells by GradDrop (AtP*): mean over layers of |estimate| with that "
        "layer's residual-branch gradient dropped; written as `grad_drop` and used to rank for verify.",
    )
    verify: Verify | None = Field(
        None, description="Re-check cells exactly and report correlations: see `attribution.verify`."
    )


SweepValue = Any


def _prompts_tag(value: Any) -> str:
    return "file" if isinstance(value, dict | PromptFile) else "inline"


Prompts = Annotated[
    Annotated[list[PromptRecord], Tag("inline")] | Annotated[PromptFile, Tag("file")],
    Discriminator(_prompts_tag),
]


class Ray(Strict):
    """`backend: ray`: cells run on Ray actors, each holding one model replica (see `ivx.backends`)."""

    address: str | None = Field(
        None, description="Cluster to join: auto, HOST:PORT, or null to start a local Ray on this machine."
    )
    actors: int = Field(2, ge=1, description="Actors (model replicas) running cells in parallel.")
    num_gpus: float = Field(0, ge=0, description="GPUs reserved per actor (1 on a GPU node).")
    num_cpus: float = Field(1, ge=0, description="CPUs reserved per actor.")
    threads: int | Literal["auto"] = Field(
        "auto",
        description="torch threads per actor; auto: the driver's count, which keeps results bit-identical "
        "to the local backend (CPU results depend on the thread count in their last bits).",
    )
    task_cells: int | Literal["auto"] = Field(
        "auto", description="Cells per task sent to an actor; auto: about 4 tasks per actor."
    )
    max_restarts: int = Field(
        3, ge=-1, description="Restarts of a dead actor (-1: unlimited); its unfinished tasks are retried."
    )
    object_store_mb: int = Field(200, ge=50, description="Object store of a local Ray started by ivx.")


class Experiment(Strict):
    """The whole experiment file."""

    name: str = Field("experiment", description="Used in the run directory name.")
    description: str | None = Field(
        None, description="Free text for readers of the config (copied into the run as config.yaml)."
    )
    model: ModelSpec = Field(description="The model: see section `model`.")
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description=f"Seeds noise draws, sampling and training (0..{MAX_SEED})."
    )
    prompts: Prompts = Field(
        description="Inline list of records (section `prompts`) or {file: data.jsonl, limit: N}."
    )
    corrupt: Corrupt | list[Corrupt] | None = Field(
        None,
        description="How the base run is corrupted; a list runs the experiment once per corruption "
        "and reports them side by side (e.g. Gaussian noise and symmetric token replacement).",
    )
    sweep: dict[str, SweepValue] = Field(
        default_factory=dict,
        description="Axis name → list of values (or 'all' for layer/position); fields bind with $axis. "
        "The grid is the product of all axes.",
    )
    interventions: list[Intervention] = Field(
        default_factory=list, description="Edits applied together in each cell: see `interventions`."
    )
    metrics: list[str] = Field(
        default_factory=lambda: ["target_prob"], description="Any of: " + ", ".join(METRICS) + "."
    )
    answer: Literal["first_token", "full"] = Field(
        "first_token",
        description="What target_prob scores: the first token that follows the prompt (ROME), or the "
        "whole target by teacher forcing (the product of its tokens' probabilities; exact, but the "
        "batch shortcuts are off). logit_diff metrics need first_token.",
    )
    method: Literal["exact", "attribution"] = Field(
        "exact",
        description="exact: patch every cell; attribution: estimate every cell's effect from one "
        "gradient per prompt (attribution patching, an approximation; see `attribution`).",
    )
    attribution: Attribution = Field(
        default_factory=Attribution, description="AtP* options and verification: see `attribution`."
    )
    output: Output = Field(default_factory=Output, description="What is written: see `output`.")
    batch: Batch = Field(default_factory=Batch, description="Batching and exact shortcuts: see `batch`.")
    backend: Literal["local", "ray"] = Field(
        "local",
        description="Where cells run: in this process, or on Ray actors (see `ray`; `ivx run --backend`).",
    )
    ray: Ray = Field(default_factory=Ray, description="Ray actors, resources and fault tolerance: see `ray`.")
    trace: Trace | None = Field(None, description="Causal-tracing analysis (ROME protocol): see `trace`.")
    controls: list[Literal["random_init", "placebo", "shuffled_labels"]] = Field(
        default_factory=list,
        description="Controls run beside the real result (summary.json → controls, plots in controls/): "
        "random_init (ivx run: a seeded re-initialised model), placebo (ivx run: norm-matched random "
        "activations/vectors), shuffled_labels (ivx train: DAS on permuted counterfactual labels).",
    )
    generate: Generate | None = Field(None, description="Settings of `ivx generate`: see `generate`.")
    train: Train | None = Field(None, description="Settings of `ivx train`: see `train`.")

    @field_validator("prompts", mode="before")
    @classmethod
    def _prompts_shape(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("prompts is empty")
        if not isinstance(value, list | dict):
            raise ValueError("prompts must be a list of records or {file: path.jsonl}")
        return value

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: list[str]) -> list[str]:
        import difflib

        for metric in value:
            if metric not in METRICS:
                near = difflib.get_close_matches(metric, METRICS, n=1)
                hint = f"did you mean {near[0]!r}? " if near else ""
                raise ValueError(f"unknown metric {metric!r}; {hint}valid: {', '.join(METRICS)}")
        return value

    @model_validator(mode="after")
    def _full_answer(self) -> Experiment:
        if self.answer == "full" and self.method == "attribution":
            raise ValueError("answer: full needs method: exact (attribution estimates first-token metrics)")
        if self.answer == "full" and {"logit_diff", "logit_diff_norm"} & set(self.metrics):
            raise ValueError(
                "answer: full scores the target only; logit_diff metrics need answer: first_token"
            )
        return self

    @field_validator("sweep")
    @classmethod
    def _sweep(cls, value: dict[str, Any]) -> dict[str, Any]:
        for axis, values in value.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", axis):
                raise ValueError(f"sweep axis name {axis!r} must be an identifier")
            if values == "all":
                continue
            if not isinstance(values, list) or not values:
                raise ValueError(f"sweep.{axis} must be a non-empty list of values or 'all'")
        return value
