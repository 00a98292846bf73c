"""`ivx sae train`: a sparse autoencoder trained on one site's activations over a prompt set.

Reads top to bottom: load the config (its `sae_train:` section, `model:`, `prompts:`, `seed:`) →
check the site against the model's structure → load the weights → collect the site's
activations at every token → train (checkpointing every `checkpoint_every` steps; `--resume`
continues from the last checkpoint, bit-identical to an uninterrupted run) → evaluate on the
held-out activations → write the SAE in SAELens's layout, `training.json`, the model card and
the curves. The run directory is itself the SAE directory (`sae: runs/…` or `ivx push`).
"""

from __future__ import annotations

import dataclasses
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ivx.config import loader as config_mod
from ivx.config import tl_names
from ivx.config.sae_train import SaeTrain
from ivx.core import threads
from ivx.core.errors import ConfigError, Problem
from ivx.methods import sae_data
from ivx.methods import sae_train as trainer
from ivx.model import components
from ivx.model import loading as models
from ivx.model import sae as saes
from ivx.plan import tokenization
from ivx.results import rundir, sae_report
from ivx.results.session import recorded_config

if TYPE_CHECKING:
    import torch

    from ivx.config.loader import LoadedConfig
    from ivx.model.components import Site
    from ivx.model.loading import LoadedModel
    from ivx.plan.tokenization import TokenizedPrompt

__all__ = ["Prepared", "prepare", "train"]

CHECKPOINT = "checkpoint.pt"


@dataclass
class Prepared:
    """A checked `ivx sae train` config: the section, the model, the site, the prompts."""

    cfg: LoadedConfig
    settings: SaeTrain
    lm: LoadedModel
    site: Site
    prompts: list[TokenizedPrompt]


# experiment sections `ivx sae train` does not read: setting one is a problem, not silently ignored
UNREAD: tuple[str, ...] = (
    *("corrupt", "sweep", "interventions", "saes", "method", "trace", "readout", "controls"),
    *("generate", "train", "answer", "metrics", "attribution", "backend", "ray"),
)


def _section(cfg: LoadedConfig) -> SaeTrain:
    settings = cfg.experiment.sae_train
    problems = [
        cfg.problem(
            (key,),
            f"`ivx sae train` does not read `{key}:` (it reads model, prompts, seed, "
            "threads, output and sae_train): remove it",
        )
        for key in UNREAD
        if key in cfg.raw
    ]
    if settings is None:
        problems.append(
            cfg.problem((), "no `sae_train:` section: `ivx sae train` reads the site and settings from it")
        )
    if problems or settings is None:
        raise ConfigError(problems)
    return settings


def _site(cfg: LoadedConfig, settings: SaeTrain, lm: LoadedModel) -> Site:
    layer = settings.layer + (lm.info.n_layers if settings.layer < 0 else 0)
    try:
        return components.resolve(lm.model, lm.info, settings.component, layer)
    except components.ComponentError as exc:
        raise ConfigError([cfg.problem(("sae_train", "layer"), str(exc))]) from None


def _plan_problems(cfg: LoadedConfig, settings: SaeTrain, d_in: int) -> list[Problem]:
    """Settings that only the site's width can check (k, aux_k against the number of latents)."""
    d_sae = settings.latents(d_in)
    problems = []
    for name in ("k", "aux_k"):
        value = getattr(settings, name)
        if value is not None and value > d_sae:
            problems.append(
                cfg.problem(("sae_train", name), f"{name} {value} is more than the {d_sae} latents (d_sae)")
            )
    return problems


def prepare(config: Path, overrides: tuple[str, ...] = (), weights: bool = True) -> Prepared:
    """Load and check the config against the model (structure first, then the weights)."""
    cfg = config_mod.load(config, overrides)
    threads.configure(cfg.experiment.threads)
    settings = _section(cfg)
    try:
        lm = models.load_spec(cfg.experiment.model, weights=False)
    except models.MetaUnsupported:
        lm = models.load_spec(cfg.experiment.model)
    site = _site(cfg, settings, lm)
    prompts = tokenization.for_config(cfg, lm.tokenizer)
    problems = _plan_problems(cfg, settings, site.dim)
    if problems:
        raise ConfigError(problems)
    if weights and lm.device.type == "meta":
        lm = models.load_spec(cfg.experiment.model)
        site = _site(cfg, settings, lm)
    return Prepared(cfg, settings, lm, site, prompts)


def plan_for(prep: Prepared, n_train: int) -> trainer.Plan:
    """Every setting resolved for `n_train` training activations (steps from epochs, defaults)."""
    s, d_in = prep.settings, prep.site.dim
    batch = min(s.batch_size, n_train)
    per_epoch = n_train // batch
    steps = s.steps if s.steps is not None else max(1, round((s.epochs or 1.0) * per_epoch))
    return trainer.Plan(
        architecture=s.architecture,
        d_in=d_in,
        d_sae=s.latents(d_in),
        k=(s.k or 16) if s.architecture == "topk" else None,
        aux_k=s.aux_k or max(1, d_in // 2),
        aux_coefficient=s.aux_coefficient,
        l1_coefficient=s.l1_coefficient or 5.0,
        steps=steps,
        batch_size=s.batch_size,
        lr=s.lr,
        warmup_steps=s.warmup_steps,
        decay_fraction=s.decay_fraction,
        dead_after=s.dead_after,
        resample_every=(s.resample_every or s.dead_after) if s.architecture == "standard" else None,
        seed=prep.cfg.experiment.seed,
    )


def hook_name(site: Site) -> str:
    """The site's TransformerLens hook name (`blocks.1.hook_resid_post`)."""
    hook = tl_names.tl_name(site.component)
    if not hook:
        return f"blocks.{site.layer}.{site.component}"  # no TransformerLens name: ivx's own
    return hook if hook == "hook_embed" else f"blocks.{site.layer}.{hook}"


def _open(prep: Prepared, config: Path, overrides: tuple[str, ...], out_root: str | None) -> Path:
    exp = prep.cfg.experiment
    run_dir = rundir.create(out_root or exp.output.root, exp.name)
    rundir.write_text(run_dir / "config.yaml", prep.cfg.text)
    rundir.Manifest.start(
        run_dir,
        name=exp.name,
        kind="sae_train",
        config=str(Path(config).resolve()),
        overrides=list(overrides),
        seed=exp.seed,
        device=str(prep.lm.device),
        model={"name": exp.model.name, "d_model": prep.lm.info.d_model, "n_layers": prep.lm.info.n_layers},
    )
    return run_dir


def _checkpoint(run_dir: Path, state: trainer.State, plan: trainer.Plan, digest: str) -> None:
    """Write the training state atomically (a kill never leaves a torn checkpoint)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"plan": dataclasses.asdict(plan), "data": digest, **trainer.state_dict(state)}, buffer)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    rundir.write_bytes(run_dir / "checkpoints" / CHECKPOINT, buffer.getvalue())


def _restore(run_dir: Path, plan: trainer.Plan, mean: torch.Tensor, digest: str) -> trainer.State:
    """The last checkpoint's state (a fresh one when there is none); refuses other settings or data."""
    import torch

    path = run_dir / "checkpoints" / CHECKPOINT
    if not path.is_file():
        return trainer.start(plan, mean)
    saved = torch.load(path, weights_only=True)
    if saved["plan"] != dataclasses.asdict(plan) or saved.get("data") != digest:
        changed = [k for k, v in dataclasses.asdict(plan).items() if saved["plan"].get(k) != v]
        changed += ["the activations (prompts or model)"] if saved.get("data") != digest else []
        raise rundir.RunDirError(
            f"{run_dir} was trained with other settings ({', '.join(changed)} differ): it cannot be resumed "
            "with this config and prompts; start a new run"
        )
    return trainer.load_state(plan, saved)


Progress = Callable[[str, int, int, dict[str, float]], object]  # (phase, done, total, last values)


def _fit(
    run_dir: Path, plan: trainer.Plan, acts: torch.Tensor, every: int, progress: Progress
) -> trainer.State:
    """Train from the last checkpoint (or the start) to `plan.steps`, checkpointing every `every` steps."""
    import hashlib

    digest = hashlib.sha256(acts.numpy().tobytes()).hexdigest()  # what a resume must train on again
    state = _restore(run_dir, plan, acts.mean(0), digest)
    progress("train", state.step, plan.steps, state.history[-1] if state.history else {})
    while state.step < plan.steps:
        entry = trainer.train_step(state, acts, plan)
        if state.step % every == 0 or state.step == plan.steps:
            _checkpoint(run_dir, state, plan, digest)
        progress("train", state.step, plan.steps, entry)
    return state


def _saved(prep: Prepared, plan: trainer.Plan, params: dict[str, torch.Tensor]) -> saes.SAE:
    """The trained weights as an `SAE` reading the raw activations at the site."""
    exp = prep.cfg.experiment
    name = hook_name(prep.site)
    meta = {
        "model_name": exp.model.name,
        "hook_name": name,
        "hook_layer": prep.site.layer,
        "prepend_bos": bool(prep.prompts and prep.prompts[0].bos),
        "context_size": max((p.length for p in prep.prompts), default=0),
        "dataset_path": _source(prep.cfg),
        "sae_lens_training_version": None,
        "trained_with": "ivx sae train",
    }
    return trainer.to_sae(params, plan, name, prep.site.layer, meta, prep.settings.dtype)


def _source(cfg: LoadedConfig) -> str:
    spec = cfg.experiment.prompts
    if isinstance(spec, list):
        return f"{cfg.path.name} (inline prompts)"
    return str(spec.file or spec.dataset)


def _command(config: Path, overrides: tuple[str, ...]) -> str:
    sets = " ".join(f"--set {shlex.quote(o)}" for o in overrides)
    return f"ivx sae train {shlex.quote(str(config))}" + (f" {sets}" if sets else "")


def _record(
    prep: Prepared,
    plan: trainer.Plan,
    data: dict[str, Any],
    final: dict[str, float],
    seconds: float,
    command: str,
) -> dict[str, Any]:
    """training.json: the site, every resolved setting, the data, the held-out metrics, the command."""
    site = {"component": prep.site.component, "layer": prep.site.layer, "hook_name": hook_name(prep.site)}
    return {
        "model": prep.cfg.experiment.model.name,
        "site": site,
        "plan": dataclasses.asdict(plan),
        "data": data,
        "final": final,
        "seconds": seconds,
        "command": command,
    }


def _write(
    run_dir: Path, prep: Prepared, plan: trainer.Plan, state: trainer.State, record: dict[str, Any]
) -> dict[str, Any]:
    """The SAE (SAELens layout), training.json, metrics.jsonl, the curves, the model card, summary.json."""
    import json

    folded = trainer.folded(state.params, record["data"]["scale"])
    saes.save(_saved(prep, plan, folded), run_dir)
    rundir.write_json(run_dir / "training.json", record)
    lines = "".join(json.dumps(entry) + "\n" for entry in state.history)
    rundir.write_text(run_dir / "metrics.jsonl", lines)
    sae_report.curves(state.history, run_dir / "plots" / "training.png")
    rundir.write_text(run_dir / "README.md", sae_report.model_card(record))
    summary = {"site": record["site"], "final": record["final"], "steps": plan.steps}
    rundir.write_json(run_dir / "summary.json", summary)
    return summary


def train(
    config: Path,
    overrides: tuple[str, ...] = (),
    out_root: str | None = None,
    resume: Path | None = None,
    progress: Progress | None = None,
    on_start: Callable[[Path], object] | None = None,
) -> Path:
    """The `ivx sae train` recipe; returns the run directory (which is the SAE directory)."""
    report: Progress = progress or (lambda *args: None)
    if resume is not None:
        config, overrides = recorded_config(resume)
    prep = prepare(config, overrides)
    run_dir = resume if resume is not None else _open(prep, config, overrides, out_root)
    if on_start is not None:
        on_start(run_dir)
    manifest = rundir.Manifest.read(run_dir)
    manifest.update(status="running")
    started = time.perf_counter()
    try:
        acts = sae_data.collect(prep.lm, prep.site, prep.prompts)  # [tokens, d_in]
        report("activations", acts.shape[0], acts.shape[0], {})
        train_idx, held_idx = sae_data.split(
            acts.shape[0], prep.settings.eval_fraction, prep.cfg.experiment.seed
        )
        scale = sae_data.norm_scale(acts[train_idx]) if prep.settings.normalize else 1.0
        plan = plan_for(prep, len(train_idx))
        state = _fit(run_dir, plan, acts[train_idx] * scale, prep.settings.checkpoint_every, report)
        held = acts[held_idx] if len(held_idx) else acts[train_idx]
        data = {
            "source": _source(prep.cfg),
            "prompts": len(prep.prompts),
            "tokens": int(acts.shape[0]),
            "train_tokens": len(train_idx),
            "held_out_tokens": len(held_idx),
            "scale": scale,
        }
        final = trainer.evaluate(trainer.folded(state.params, scale), held, plan)
        record = _record(prep, plan, data, final, time.perf_counter() - started, _command(config, overrides))
        _write(run_dir, prep, plan, state, record)
    except BaseException as exc:
        manifest.finish("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    manifest.finish("complete", seconds=round(time.perf_counter() - started, 1), final=final)
    return run_dir
