"""Resolve one intervention, at one grid point, for one prompt into concrete `Edit`s.

This is the only resolver: `ivx run`, `ivx generate` and `ivx train` all turn their
interventions into edits here — layers (a list, `all`, a window, negative indices), positions,
the run a source activation comes from and where in it, heads, and severed paths. Problems are
collected, never raised, so the caller reports every one at once; a field bound to a sweep axis
is reported (by `plan`) at the sweep value that caused it, since that is where it is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ivx.config import module_names
from ivx.config.fields import TRAINABLE_KINDS
from ivx.config.schema import Contrast, Intervention
from ivx.core import interventions
from ivx.model import mixers
from ivx.plan import sae as sae_plan
from ivx.plan.positions import resolve
from ivx.plan.tokenization import PositionError, TokenizedPrompt

if TYPE_CHECKING:
    from ivx.config.loader import LoadedConfig
    from ivx.core.errors import Problem
    from ivx.model.components import ModelInfo

Mode = Literal["run", "generate", "train"]
SourceRun = Literal["base", "source", "corrupted", "none"]
On = Literal["prompt", "generated", "all"]

HEAD_COUNT_OF: dict[str, str] = {
    "head_attention_value_output": "n_heads",
    "head_attention_pattern": "n_heads",  # per query head (GQA: keys are repeated per query head)
    "head_query_output": "n_heads",
    "head_key_output": "n_kv_heads",
    "head_value_output": "n_kv_heads",
}
SOURCE_KINDS = frozenset(kind for kind, spec in interventions.KINDS.items() if spec.needs_source)


@dataclass(frozen=True)
class Edit:
    """One concrete intervention at one (component, layer) for one cell."""

    index: int  # position of the intervention in the config's list
    name: str
    kind: str
    component: str
    layer: int
    positions: tuple[int, ...]  # base-prompt positions (empty when only generated tokens are edited)
    source: SourceRun
    source_positions: tuple[int, ...]
    heads: tuple[int, ...] | None
    subspace: tuple[int, ...] | None
    value: float | None
    coefficient: float
    vector: str | None
    bundle: str | None = None
    on: On = "prompt"  # ivx generate: prompt positions, every generated token, or both
    contrast: Contrast | None = None  # the vector is built from contrast prompts (`engine.binding`)
    sae: str | None = None  # the kind acts on this SAE's features (a path or hf:// reference)
    features: tuple[int, ...] | None = None  # with `sae`: the features edited (None: all, or `top`)
    top: int | None = None  # with `sae`: the k most active features at each position
    sae_error: str = "keep"  # with `sae`: keep the reconstruction error (exact) or drop it

    @property
    def trainable(self) -> bool:
        """True for DAS kinds: the site `ivx train` learns a subspace at."""
        return self.kind in TRAINABLE_KINDS


def head_count(info: ModelInfo, component: str) -> int | None:
    """Heads of a head_* component (GQA: keys/values have fewer), None for other components."""
    attr = HEAD_COUNT_OF.get(component)
    return int(getattr(info, attr)) if attr is not None else None


@dataclass(frozen=True)
class _Scope:
    """Where problems go: the config, the intervention's index, its sweep-bound fields, a prompt."""

    cfg: LoadedConfig
    index: int
    prompt: TokenizedPrompt
    problems: list[Problem]

    def report(self, field: str, message: str) -> None:
        self.problems.append(self.cfg.problem(("interventions", self.index, field), message))


def resolve_edits(
    cfg: LoadedConfig,
    info: ModelInfo,
    prompt: TokenizedPrompt,
    index: int,
    iv: Intervention,
    problems: list[Problem],
    mode: Mode = "run",
) -> list[Edit]:
    """The edits of intervention `index` (its `$axis` fields already substituted) for one prompt.

    Problems name the intervention's field; `plan` moves those of a sweep-bound field to the
    sweep value that caused them (`config.at_sweep_value`)."""
    scope = _Scope(cfg, index, prompt, problems)
    if iv.sae is not None:
        placed = sae_plan.place(cfg, info, index, iv, scope.report)
        if placed is None:
            return []
        iv = placed
    if not _fits_mode(scope, iv, mode) or not _component_exists(scope, info, iv.component):
        return []
    layers = _layers(scope, info, iv)
    positions: tuple[int, ...] | None = ()
    if iv.on != "generated":
        positions = _positions(scope, "position", iv.position, prompt.length, prompt.subject_span)
    if positions is None:
        _heads(scope, info, iv)  # keep checking: every problem at once
        return []
    sourced = _source(scope, iv, positions, mode)
    heads = _heads(scope, info, iv)
    if sourced is None or heads is False or not layers:
        return []
    source, source_positions = sourced
    name = iv.name or f"iv{index}"
    edits = [
        Edit(
            index=index,
            name=name,
            kind=iv.kind,
            component=iv.component,
            layer=layer,
            positions=positions,
            source=source,
            source_positions=source_positions,
            heads=None if iv.sae is not None else heads,  # an SAE reads the whole site
            subspace=tuple(iv.subspace) if iv.subspace else None,
            value=iv.value,
            coefficient=iv.coefficient,
            vector=iv.vector,
            bundle=iv.bundle,
            on=iv.on,
            contrast=iv.contrast,
            sae=sae_plan.meta(cfg, iv).ref if iv.sae is not None else None,
            features=sae_plan.features(iv) if iv.sae is not None else None,
            top=iv.top,
            sae_error=iv.sae_error,
        )
        for layer in layers
    ]
    return _severed(iv, index, name, max(layers), prompt.length, info.n_layers) + edits


def _fits_mode(scope: _Scope, iv: Intervention, mode: Mode) -> bool:
    """Fields a command cannot honour are problems, never silently ignored."""
    ok = True
    trainable = iv.kind in TRAINABLE_KINDS
    if mode != "train" and trainable and iv.bundle is None:
        scope.report(
            "bundle",
            f"{iv.kind} is trainable: ivx {mode} needs its trained parameters in `bundle` (a bundle "
            "directory or hf://user/name); `ivx train` trains them (check a training config with "
            "`ivx validate --for train`)",
        )
        ok = False
    if mode == "train" and not trainable:
        scope.report("kind", f"ivx train trains a trainable kind ({', '.join(sorted(TRAINABLE_KINDS))})")
        ok = False
    if mode != "run" and iv.sever is not None:
        scope.report("sever", f"sever holds paths at a corrupted run, which ivx {mode} has none of")
        ok = False
    if mode != "generate" and iv.on != "prompt":
        scope.report("on", f"on: {iv.on} applies to ivx generate only; ivx {mode} edits prompt positions")
        ok = False
    if mode == "generate" and iv.on != "prompt" and iv.vector is None and iv.contrast is None:
        if (iv.kind in SOURCE_KINDS or iv.kind == "set") and (iv.sae is None or iv.kind == "vanilla"):
            scope.report(
                "on",
                f"on: {iv.on} with kind {iv.kind} needs a vector (`vector` or `contrast`): generated "
                "tokens have no source-run activation to copy",
            )
            ok = False
    return ok


def _component_exists(scope: _Scope, info: ModelInfo, component: str) -> bool:
    if component in info.components or module_names.is_path(component):  # paths: plan/module_checks
        return True
    scope.report(
        "component",
        f"component {component!r} does not exist in this model ({info.model_type}, layout "
        f"{info.layout}); available: {', '.join(info.components)}",
    )
    return False


def _window(layer: int, window: int | None, n_layers: int) -> list[int]:
    if not window:
        return [layer]
    # ROME's convention: layers [l - w//2, l + ceil(w/2)) clipped to the model.
    return list(range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2))))


def _layers(scope: _Scope, info: ModelInfo, iv: Intervention) -> list[int]:
    """Concrete layers: a list, `all` or one index (negative from the end), each widened by its window."""
    if iv.layer == "all":
        spec: list[int] = list(range(info.n_layers))
    else:
        spec = iv.layer if isinstance(iv.layer, list) else [iv.layer]
    size = iv.window.get(iv.component) if isinstance(iv.window, dict) else iv.window
    trace = scope.cfg.experiment.trace
    if iv.window is None and trace is not None and iv.kind == "vanilla":
        size = trace.windows(info.n_layers).get(iv.component)  # ROME's window, scaled to the depth
    layers: list[int] = []
    for layer in spec:
        concrete = layer + info.n_layers if layer < 0 else layer
        if iv.component == "embedding":
            concrete = 0
        elif not 0 <= concrete < info.n_layers:
            scope.report(
                "layer",
                f"layer {layer} is out of range: the model has {info.n_layers} layers "
                f"(0..{info.n_layers - 1})",
            )
            continue
        layers += [lay for lay in _window(concrete, size, info.n_layers) if lay not in layers]
    per_layer = getattr(info, "layers", ()) if iv.component != "embedding" else ()
    # a hybrid's blocks differ: some components exist at some layers only
    absent = [lay for lay in layers if per_layer and iv.component not in per_layer[lay]]
    for lay in absent:
        scope.report("layer", mixers.missing(str(iv.component), lay, per_layer, info.model_type))
    return [lay for lay in layers if lay not in absent]


def _positions(
    scope: _Scope, field: str, spec: object, length: int, subject: tuple[int, int] | None
) -> tuple[int, ...] | None:
    try:
        return resolve(spec, length, subject)
    except PositionError as exc:
        where = "source" if field == "source_position" else ""
        scope.report(field, f"prompt {scope.prompt.index}{' ' + where if where else ''}: {exc}")
        return None


def _source(
    scope: _Scope, iv: Intervention, positions: tuple[int, ...], mode: Mode
) -> tuple[SourceRun, tuple[int, ...]] | None:
    """The run a source activation is copied from and its positions (one per base position)."""
    prompt = scope.prompt
    if iv.kind not in SOURCE_KINDS or iv.vector is not None or iv.contrast is not None or not positions:
        return "none", ()
    if iv.sae is not None and iv.kind != "vanilla":  # feature addition needs no source run
        return "none", ()
    source: SourceRun = iv.source if iv.source != "auto" else ("source" if prompt.source_ids else "base")
    if mode == "train":
        source = "source"
    if source == "source" and prompt.source_ids is None:
        scope.report("source", f"prompt {prompt.index} has no `source` prompt")
        return None
    src_len = len(prompt.source_ids) if source == "source" and prompt.source_ids else prompt.length
    src_subject = prompt.source_subject_span if source == "source" else prompt.subject_span
    if iv.source_position is not None:
        found = _positions(scope, "source_position", iv.source_position, src_len, src_subject)
        if found is None:
            return None
        source_positions = found
    elif src_len != prompt.length:
        scope.report(
            "source_position",
            f"prompt {prompt.index}: base has {prompt.length} tokens but the source has "
            f"{src_len}; set `source_position` to map positions explicitly",
        )
        return None
    else:
        source_positions = positions
    if len(source_positions) not in (1, len(positions)):
        scope.report(
            "source_position",
            f"{len(source_positions)} source positions for {len(positions)} base positions "
            "(give one, or as many as `position`)",
        )
        return None
    if len(source_positions) == 1 and len(positions) > 1:
        source_positions = source_positions * len(positions)
    return source, source_positions


def _heads(scope: _Scope, info: ModelInfo, iv: Intervention) -> tuple[int, ...] | None | Literal[False]:
    """Heads of a head_* component (`all` or unset: every head); False after a problem."""
    n_heads = head_count(info, iv.component)
    if n_heads is None:
        return None
    spec = list(range(n_heads)) if iv.head is None or iv.head == "all" else iv.head
    heads = tuple(spec if isinstance(spec, list) else [spec])
    bad = [h for h in heads if h >= n_heads]
    if bad:
        scope.report(
            "head", f"head {bad[0]} is out of range: {iv.component} has {n_heads} heads (0..{n_heads - 1})"
        )
        return False
    return heads


def _severed(iv: Intervention, index: int, name: str, top: int, length: int, n_layers: int) -> list[Edit]:
    """ROME's severed paths: `sever` held at its corrupted value in every layer above `top`."""
    if iv.sever is None:
        return []
    every = tuple(range(length))
    return [
        Edit(
            index=index,
            name=f"{name}.sever",
            kind="vanilla",
            component=iv.sever,
            layer=later,
            positions=every,
            source="corrupted",
            source_positions=every,
            heads=None,
            subspace=None,
            value=None,
            coefficient=1.0,
            vector=None,
        )
        for later in range(top + 1, n_layers)
    ]
