"""Schema sections that tune how a command runs: output, batch, trace, attribution, generate,
train and the Ray backend (the experiment's own sections are in `ivx.schema`).

Pure data, no torch; every section is re-exported by `ivx.schema`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ivx.config.fields import check_window

# per-(seed, prompt, sample) noise seeds are seed × ~10^10 + ...: they must stay below 2^64
MAX_SEED = 2**30 - 1
MAX_ROWS_PER_BATCH = 1_000_000
ROME_WINDOW, ROME_LAYERS = 10, 48  # ROME's causal-tracing window on GPT-2-XL


class Strict(BaseModel):
    """Base for every schema section: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Output(Strict):
    """`output:` where and what to write."""

    root: str = Field("runs", description="Directory the timestamped run directory is created in.")
    logits: Literal["none", "last", "all"] = Field(
        "last", description="Which logits go into tensors.safetensors."
    )
    plots: bool = Field(True, description="Write heatmaps into plots/.")
    top_k: int = Field(5, ge=1, le=100, description="Tokens listed by the top_k metric.")
    report: bool = Field(
        True, description="Write report.html: interactive figures, per-prompt drill-down, config, manifest."
    )
    trackers: list[Literal["wandb", "mlflow"]] = Field(
        default_factory=list,
        description="Also log the run to these trackers (extras ivx[wandb], ivx[mlflow]): config as "
        "parameters, summary metrics, figures, the run directory as an artifact; a failure only warns.",
    )


class Batch(Strict):
    """`batch:` how many sequences go through the model at once."""

    size: int | Literal["auto"] = Field("auto", description="Rows per forward pass (≥ 1), or auto.")
    memory_gb: float | Literal["auto"] = Field(
        "auto",
        description="Activation-memory budget (GiB per device) for size auto; auto: on a GPU, 60% of "
        "its memory left by the weights, on a CPU 2 GiB (at most a quarter of the RAM).",
    )

    @field_validator("size", "memory_gb", mode="before")
    @classmethod
    def _auto_or_number(cls, value: Any, info: ValidationInfo) -> Any:
        if value == "auto":
            return value
        if info.field_name == "size":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ROWS_PER_BATCH:
                raise ValueError(
                    f"batch.size {value!r} must be 'auto' or an integer 1..{MAX_ROWS_PER_BATCH:,}"
                )
        elif isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"batch.memory_gb {value!r} must be 'auto' or a number of GiB > 0")
        return value

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
    trim_final: bool = Field(
        True,
        description="With the deferred head, run the last block's attention output projection and "
        "MLP on the last position only (the other positions' last-block outputs are never read; "
        "their keys and values are still computed).",
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
    window: dict[str, int] | None = Field(
        None,
        description="Layer window of vanilla restorations that set no `window` of their own, per "
        "component, clipped at the ends. Default: ROME's 10 of GPT-2-XL's 48 layers scaled to the "
        "model, round(n_layers × 10/48) (at least 1), for mlp_output and attention_output; hidden "
        "states one layer. {} restores single layers.",
    )

    @field_validator("window")
    @classmethod
    def _trace_window(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        return check_window(value) if value is not None else None

    def windows(self, n_layers: int) -> dict[str, int]:
        """The layer window per component on a model of `n_layers` (as set, or ROME's scaled)."""
        if self.window is not None:
            return dict(self.window)
        size = max(1, int(n_layers * ROME_WINDOW / ROME_LAYERS + 0.5))  # round half up
        return {"mlp_output": size, "attention_output": size}


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


class Ray(Strict):
    """`backend: ray`: cells run on Ray actors, each with one model replica (see `ivx.recipes.backends`)."""

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
