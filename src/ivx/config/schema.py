"""The experiment-file schema: pydantic models named after the YAML keys they validate.

Pure data, no torch. Fields that may bind to a sweep axis accept a `$axis` string; the plan
stage substitutes the axis values and checks the concrete values against the model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    NonNegativeInt,
    PrivateAttr,
    Tag,
    field_validator,
    model_validator,
)

from ivx.config import sweep as sweeps
from ivx.config import tl_names
from ivx.config.fields import (
    METRICS,
    Component,
    Head,
    Kind,
    Layer,
    Position,
    PositiveOrRef,
    Sever,
    check_window,
    is_ref,
)
from ivx.config.inputs import ModelSpec, PromptFile, PromptRecord
from ivx.config.sae_fields import Feature, SaeEntry
from ivx.config.sae_train import SaeTrain
from ivx.config.settings import MAX_SEED, Attribution, Batch, Generate, Output, Ray, Strict, Trace, Train
from ivx.core import interventions, metrics


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


class Reference(Strict):
    """`interventions[].reference:` the prompt set a mean or resample ablation takes its values from."""

    file: str = Field(description="JSONL of records (only `base` is read), relative to the config file.")
    limit: int | None = Field(None, ge=1, description="Use only the first N records.")


class Receiver(Strict):
    """One entry of `interventions[].receivers`: a component whose input a path patch reaches."""

    component: Component = Field(description="Receiving component, e.g. head_query_output, mlp_input.")
    layer: int = Field(description="Layer index (negative counts from the last layer).")
    head: NonNegativeInt | list[NonNegativeInt] | None = Field(
        None, description="Head(s) of head_* receivers."
    )
    position: Position = Field("all", description="Positions of the receiver patched (base prompt).")

    @model_validator(mode="before")
    @classmethod
    def _tl_layer(cls, data: Any) -> Any:
        return tl_names.with_layer(data)  # component: blocks.3.attn.hook_q sets layer 3


class Intervention(Strict):
    """One entry of `interventions:`: what to do at which site."""

    # `$axis` references the loader swapped for stand-ins (config.sweep): (path, axis) pairs; a
    # default, not a default_factory, which pydantic would inspect on every validation (~1 ms per
    # plan cell); pydantic copies the empty list for each instance
    _refs: list[tuple[tuple[Any, ...], str]] = PrivateAttr(default=[])

    kind: Kind = Field(description="What the intervention does (see the kind table), or a $axis.")
    name: str | None = Field(None, description="Name used for saved tensors; default iv<index>.")
    component: Component = Field(
        "block_output",
        description="Component name (pyvene vocabulary), or any module inside a block by path: "
        "{module: model.layers.{layer}.mlp.act_fn, hook: output | input} (docs/module_paths.md).",
    )
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
    reference: Reference | None = Field(
        None,
        description="mean / resample: the prompt set the values come from (default: the base prompts).",
    )
    pool: Literal["position", "all"] = Field(
        "position",
        description="mean: per position over reference records of the base prompt's token length, "
        "or pooled over every position of every reference record (all).",
    )
    receivers: list[Receiver] | None = Field(
        None,
        description="Path patching: this (vanilla, mean or resample) intervention is the sender; only its "
        "direct effect on these receivers' inputs is patched, every other head and MLP output frozen at the "
        "run patched into (the base run, or the corrupted run with `corrupt:`; see "
        "docs/tutorials/path-patching.md).",
    )
    sae: str | None = Field(
        None,
        description="Act on this sparse autoencoder's features (a `saes:` name, a SAELens-layout directory "
        "or hf://user/name[/subdir]); see docs/saes.md.",
    )
    feature: Feature = Field(None, description="sae: feature index, list, 'all' or $axis.")
    top: int | None = Field(None, ge=1, description="sae: the k most active features at each position.")
    sae_error: Literal["keep", "drop"] = Field(
        "keep", description="sae: keep the reconstruction error (exact) or drop it (activation = decode)."
    )

    @model_validator(mode="before")
    @classmethod
    def _tl_layer(cls, data: Any) -> Any:
        return tl_names.with_layer(data)  # component: blocks.3.attn.hook_z sets layer 3

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
        required = () if is_ref(self.kind) or self.sae else interventions.KINDS[self.kind].requires
        if required and all(getattr(self, name) is None for name in required):
            wanted = " or ".join(f"`{name}`" for name in required)
            raise ValueError(f"kind {self.kind!r} needs {wanted}")
        if self.vector is not None and self.contrast is not None:
            raise ValueError("give `vector` or `contrast`, not both")
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


SweepValue = Any


def _prompts_tag(value: Any) -> str:
    # capitalised tags: pydantic puts the tag in error locations, and a lower-case one would read
    # as a YAML key (`prompts.file`) in problems about a typo beside `file`
    return "PromptFile" if isinstance(value, dict | PromptFile) else "PromptList"


Prompts = Annotated[
    Annotated[list[PromptRecord], Tag("PromptList")] | Annotated[PromptFile, Tag("PromptFile")],
    Discriminator(_prompts_tag),
]


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
    threads: Annotated[int, Field(ge=1)] | Literal["auto", "off"] = Field(
        "auto",
        description="CPU threads torch uses (auto: torch's own count, its threads sleeping while they wait; "
        "off: ivx sets nothing). OMP_NUM_THREADS or IVX_THREADS in the environment win. Packing never "
        "depends on it; CPU results may differ in their last bits.",
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
        description="Axis name → list of values (or 'all' for layer/position/head); any intervention "
        "field binds with $axis. `zip: {layer: [3, 5], head: [1, 7]}` takes axes together and "
        "`points: [{name: top1, layer: 3, head: 1}, ...]` lists named points, each one dimension; the "
        "grid is the product of the dimensions (see docs/sweeps.md).",
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
        "batch shortcuts are off). Other target metrics (logit_diff, target_logit, ...) need first_token.",
    )
    method: Literal["exact", "attribution"] = Field(
        "exact",
        description="exact: patch every cell; attribution: estimate every cell's effect from one "
        "gradient per prompt (attribution patching, an approximation; see `attribution`).",
    )
    attribution: Attribution = Field(
        default_factory=lambda: Attribution.model_validate({}),
        description="AtP* options and verification: see `attribution`.",
    )
    output: Output = Field(
        default_factory=lambda: Output.model_validate({}), description="What is written: see `output`."
    )
    batch: Batch = Field(
        default_factory=lambda: Batch.model_validate({}),
        description="Batching and exact shortcuts: see `batch`.",
    )
    backend: Literal["local", "ray"] = Field(
        "local",
        description="Where cells run: in this process, or on Ray actors (see `ray`; `ivx run --backend`).",
    )
    ray: Ray = Field(
        default_factory=lambda: Ray.model_validate({}),
        description="Ray actors, resources and fault tolerance: see `ray`.",
    )
    trace: Trace | None = Field(None, description="Causal-tracing analysis (ROME protocol): see `trace`.")
    readout: Literal["logit_lens", "dla"] | None = Field(
        None,
        description="Read out each cell's run (the clean run without interventions): logit_lens = every "
        "layer's residual through the final norm and unembedding, per position; dla = each head's and MLP's "
        "direct contribution to the target − foil logit (final norm's scale frozen). See docs/readouts.md.",
    )
    controls: list[Literal["random_init", "placebo", "shuffled_labels"]] = Field(
        default_factory=list,
        description="Controls run beside the real result (summary.json → controls, plots in controls/): "
        "random_init (run and train: a seeded re-initialised model), placebo (ivx run: norm-matched random "
        "activations/vectors; ivx train: the untrained random basis, always reported as control_iia, listed "
        "to draw it beside the others), shuffled_labels (ivx train only: DAS on permuted counterfactual "
        "labels). ivx generate takes none.",
    )
    generate: Generate | None = Field(None, description="Settings of `ivx generate`: see `generate`.")
    train: Train | None = Field(None, description="Settings of `ivx train`: see `train`.")
    saes: list[SaeEntry] = Field(
        default_factory=list, description="Sparse autoencoders named for `interventions[].sae`."
    )
    sae_train: SaeTrain | None = Field(
        None, description="Settings of `ivx sae train` (a sparse autoencoder at one site): see `sae_train`."
    )

    @field_validator("corrupt")
    @classmethod
    def _corrupt_not_empty(cls, value: Corrupt | list[Corrupt] | None) -> Corrupt | list[Corrupt] | None:
        if isinstance(value, list) and not value:
            raise ValueError("corrupt is an empty list: give one corruption, a list of them, or leave it out")
        return value

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
        first = [
            m for m in metrics.needing("target", self.metrics) if metrics.METRICS[m].quantity != "target_prob"
        ]
        if self.answer == "full" and first:
            raise ValueError(
                f"answer: full rescores target_prob (and the effects built on it) over the whole target; "
                f"{', '.join(first)} score the first answer token only: use answer: first_token for them"
            )
        return self

    @field_validator("sweep")
    @classmethod
    def _sweep(cls, value: dict[str, Any]) -> dict[str, Any]:
        problems = sweeps.shape_problems(value)  # product axes, zip groups, named points
        if problems:
            raise ValueError("; ".join(problems))
        return value
