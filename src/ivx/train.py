"""`ivx train`: interchange intervention training (IIT) of DAS interventions, from a YAML file.

For each grid point (e.g. layer × position × low_rank_dimension) a fresh trainable intervention
is trained with the model frozen: the base prompt runs with the learned subspace interchanged
from the source prompt's activation at the same site, and the loss is the cross entropy of the
counterfactual target. Interchange intervention accuracy (IIA) on held-out records says whether
the hypothesised variable lives in that subspace; an untrained random rotation of the same
size is the control.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import torch


@dataclass
class Example:
    """One training record, tokenized, with its source activation at the site."""

    ids: list[int]
    positions: tuple[int, ...]
    source: Any  # [n_pos, dim]
    target: int


def _examples(lm: Any, cfg: Any, iv: Any, site: Any, prompts: list) -> list[Example]:
    import torch

    from ivx import hooks, positions

    out = []
    for p in prompts:
        if p.source_ids is None or p.target_id is None:
            raise ValueError(f"record {p.index} needs `source` and `target` (the counterfactual answer)")
        pos = positions.resolve(iv.position, p.length, p.subject_span)
        src_len = len(p.source_ids)
        if iv.source_position is not None:
            spos = positions.resolve(iv.source_position, src_len, p.source_subject_span)
        elif src_len == p.length:
            spos = pos  # same template, same length: the same positions
        else:
            raise ValueError(f"record {p.index}: base and source lengths differ; set `source_position`")
        if len(spos) != len(pos):
            raise ValueError(f"record {p.index}: {len(spos)} source positions for {len(pos)} base positions")
        with torch.inference_mode(), hooks.capturing(lm.model, [site]) as store:
            lm.model(input_ids=torch.tensor([p.source_ids], device=lm.device))
        out.append(Example(list(p.base_ids), pos, store[site][0, list(spos)].clone(), p.target_id))
    return out


def _batches(examples: list[Example], size: int, rng: random.Random | None) -> list[list[Example]]:
    """Batches of equal-length prompts (no padding needed)."""
    by_len: dict[int, list[Example]] = {}
    for ex in examples:
        by_len.setdefault(len(ex.ids), []).append(ex)
    batches = []
    for group in by_len.values():
        if rng is not None:
            rng.shuffle(group)
        batches += [group[i : i + size] for i in range(0, len(group), size)]
    if rng is not None:
        rng.shuffle(batches)
    return batches


def _forward(lm: Any, site: Any, batch: list[Example], fn: Any) -> torch.Tensor:
    """Last-position logits of the base prompts with `fn` interchanging at the site."""
    import torch

    from ivx import hooks

    n = len(batch[0].positions)
    ids = torch.tensor([ex.ids for ex in batch], device=lm.device)
    patch = hooks.Patch(
        site=site,
        rows=torch.arange(len(batch), device=lm.device).repeat_interleave(n),
        positions=torch.tensor([p for ex in batch for p in ex.positions], device=lm.device),
        fn=fn,
        source=torch.cat([ex.source for ex in batch]).to(lm.device),
    )
    with hooks.patching(lm.model, [patch]):
        return lm.model(input_ids=ids, logits_to_keep=1).logits[:, -1].float()


def iia(lm: Any, site: Any, examples: list[Example], fn: Any, batch_size: int = 128) -> float:
    """Interchange intervention accuracy: argmax under the intervention == counterfactual target."""
    import torch

    correct = 0
    with torch.no_grad():
        for batch in _batches(examples, batch_size, None):
            logits = _forward(lm, site, batch, fn)
            correct += int((logits.argmax(-1).cpu() == torch.tensor([ex.target for ex in batch])).sum())
    return correct / max(1, len(examples))


def split(n: int, eval_split: float, seed: int) -> tuple[set[int], list[int]]:
    """(held-out indices, training indices): a seeded shuffle of the records."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_held = max(1, int(n * eval_split))
    return set(order[:n_held]), order[n_held:]


def train_point(
    lm: Any,
    site: Any,
    iv: Any,
    settings: Any,
    train: list[Example],
    held: list[Example],
    seed: int,
    log: Any,
    checkpoint: Path | None = None,
) -> dict[str, Any]:
    """Train one intervention; return its module, history and held-out IIA."""
    import torch

    from ivx import das

    torch.manual_seed(seed)
    mod = das.module(iv.kind, site.dim, iv).to(lm.device)
    control = iia(lm, site, held, das.module(iv.kind, site.dim, iv).to(lm.device))  # untrained: random basis
    optim = torch.optim.AdamW(mod.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    history: list[dict[str, Any]] = []
    start_epoch, best, best_state, stale = 0, -1.0, None, 0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        mod.load_state_dict(state["module"])
        optim.load_state_dict(state["optim"])
        start_epoch, best, stale = state["epoch"] + 1, state["best"], state["stale"]
        best_state = state["best_state"]
        history = json.loads(state["history"])
        log(f"resumed from {checkpoint} at epoch {start_epoch}")
    rng = random.Random(seed)
    temps = iv.temperature or [1.0, 0.05]
    step = 0
    for epoch in range(start_epoch, settings.epochs):
        if hasattr(mod, "temperature"):  # boundless/sigmoid: anneal the boundary temperature
            frac = epoch / max(1, settings.epochs - 1)
            mod.temperature.fill_(temps[0] * (temps[1] / temps[0]) ** frac)
        losses = []
        for batch in _batches(train, settings.batch_size, rng):
            logits = _forward(lm, site, batch, mod)
            target = torch.tensor([ex.target for ex in batch], device=lm.device)
            loss = torch.nn.functional.cross_entropy(logits, target)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            losses.append(float(loss.detach()))
            step += 1
        score = iia(lm, site, held, mod)
        entry = {"epoch": epoch, "steps": step, "loss": sum(losses) / max(1, len(losses)), "iia": score}
        history.append(entry)
        log(f"  epoch {epoch}: loss {entry['loss']:.4f}  held-out IIA {score:.3f}")
        if score > best + 1e-9:
            best, stale = score, 0
            best_state = {k: v.detach().clone() for k, v in mod.state_dict().items()}
        else:
            stale += 1
        if checkpoint is not None:
            torch.save(
                {
                    "module": mod.state_dict(),
                    "optim": optim.state_dict(),
                    "epoch": epoch,
                    "best": best,
                    "stale": stale,
                    "best_state": best_state,
                    "history": json.dumps(history),
                },
                checkpoint,
            )
        if settings.patience is not None and stale >= settings.patience:
            log(f"  early stop: no IIA gain for {stale} epochs")
            break
    if best_state is not None:
        mod.load_state_dict(best_state)
    return {
        "module": mod,
        "history": history,
        "iia": iia(lm, site, held, mod),
        "control_iia": control,
        "train_iia": iia(lm, site, train, mod),
    }


def train_run(
    config: Path, overrides: tuple[str, ...], out_root: str | None, resume: Path | None, log: Any
) -> Path:
    """The `ivx train` recipe: every grid point trained, evaluated and bundled."""
    import itertools

    import yaml
    from safetensors.torch import save_file

    from ivx import bundle, components, controls, models, plan, rundir, tokenization, train_report
    from ivx import config as config_mod
    from ivx.config import ConfigError
    from ivx.schema import TRAINABLE_KINDS, Train, is_ref

    if resume is not None:
        previous = json.loads((resume / "manifest.json").read_text())
        original = Path(previous.get("config") or "")
        config = original if original.is_file() else resume / "config.yaml"
        overrides = tuple(previous.get("overrides", []))
    cfg = config_mod.load(config, overrides)
    exp = cfg.experiment
    settings = exp.train or Train()
    if len(exp.interventions) != 1 or exp.interventions[0].kind not in TRAINABLE_KINDS:
        raise ConfigError(
            [
                cfg.problem(
                    ("interventions",),
                    "ivx train needs exactly one trainable intervention "
                    f"({', '.join(sorted(TRAINABLE_KINDS))})",
                )
            ]
        )
    spec = exp.model
    lm = models.load(spec.name, spec.revision, spec.dtype, spec.device, spec.trust_remote_code)
    for param in lm.model.parameters():  # the model is frozen: only the intervention trains
        param.requires_grad_(False)
    records = cfg.records[: settings.max_records] if settings.max_records else cfg.records
    prompts = tokenization.for_config(cfg, lm.tokenizer, records)
    plan.expand(cfg, lm.info, prompts[:1])  # model-aware checks (layers, positions) before training
    held_idx, train_idx = split(len(prompts), settings.eval_split, exp.seed)
    if resume is not None:
        run_dir = resume
        manifest = rundir.Manifest.read(run_dir)
        manifest.update(status="running")
    else:
        run_dir = rundir.create(out_root or exp.output.root, exp.name)
        rundir.write_text(run_dir / "config.yaml", cfg.text)
        manifest = rundir.Manifest.start(
            run_dir,
            name=exp.name,
            kind="train",
            config=str(Path(config).resolve()),
            overrides=list(overrides),
            seed=exp.seed,
            device=str(lm.device),
            model={
                "name": spec.name,
                "revision": spec.revision,
                "d_model": lm.info.d_model,
                "n_layers": lm.info.n_layers,
            },
        )
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    axes = list(exp.sweep)
    grid = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*(exp.sweep[a] for a in axes))]
    iv0 = exp.interventions[0]
    results, tensors, best = [], {}, None
    started = time.perf_counter()
    try:
        done = {}
        results_file = run_dir / "results.jsonl"
        if results_file.exists():
            for line in results_file.read_text().splitlines():
                row = json.loads(line)
                done[row["point"]] = row
        for index, point in enumerate(grid):
            data = iv0.model_dump()
            for key, value in data.items():
                if is_ref(value):
                    data[key] = point[value[1:]]
            iv = type(iv0).model_validate(data)
            layer = iv.layer + lm.info.n_layers if iv.layer < 0 else iv.layer
            site = components.resolve(lm.model, lm.info, iv.component, layer)
            examples = _examples(lm, cfg, iv, site, prompts)
            train = [examples[i] for i in train_idx]
            held = [examples[i] for i in sorted(held_idx)]
            name = iv.name or "das"
            log(
                f"[{index + 1}/{len(grid)}] {point or 'single site'}: {iv.kind} at {iv.component}[{layer}] "
                f"position {iv.position}, {len(train)} train / {len(held)} held-out records"
            )
            out = train_point(
                lm,
                site,
                iv,
                settings,
                train,
                held,
                exp.seed + index,
                log,
                run_dir / "checkpoints" / f"point{index}.pt",
            )
            params = out["module"].params()
            split_idx = (train_idx, sorted(held_idx))
            ctrl = controls.das_point(
                lm, cfg, iv, site, prompts, examples, split_idx, settings, exp.seed + index
            )
            row = {
                "point": index,
                **point,
                "iia": out["iia"],
                "train_iia": out["train_iia"],
                "control_iia": out["control_iia"],
                "epochs": len(out["history"]),
                **ctrl,
            }
            results.append(row)
            if str(index) not in {str(k) for k in done}:
                with results_file.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
            with (run_dir / "metrics.jsonl").open("a") as fh:
                for entry in out["history"]:
                    fh.write(json.dumps({"point": index, **point, **entry}) + "\n")
            for key, value in params.items():
                tensors[f"{name}.point{index}.{key}"] = value.cpu().contiguous()
            if best is None or out["iia"] > best[0]:
                concrete = iv.model_dump(mode="json", exclude_none=True)
                concrete.update({"layer": layer, "name": name, "bundle": "."})
                best = (out["iia"], concrete, {f"{name}.{k}": v.cpu() for k, v in params.items()}, index)
        save_file(tensors, str(run_dir / "interventions.safetensors"))
        assert best is not None
        bundle.save(
            run_dir / "bundle",
            [best[1]],
            best[2],
            {
                "name": spec.name,
                "revision": spec.revision,
                "d_model": lm.info.d_model,
                "n_layers": lm.info.n_layers,
            },
        )
        rundir.write_text(run_dir / "interventions.yaml", yaml.safe_dump({"interventions": [best[1]]}))
        summary = {"points": results, "best_point": best[3], "best_iia": best[0], "axes": axes}
        summary["warnings"] = controls.das_warnings(results) if exp.controls else []
        rundir.write_json(run_dir / "summary.json", summary)
        train_report.write(run_dir, summary)
        if exp.controls:
            rundir.write_text(
                run_dir / "controls.txt", "\n".join(controls.das_outputs(run_dir, summary)) + "\n"
            )
        with (run_dir / "bundle" / "README.md").open("a") as fh:
            fh.write(train_report.bundle_note(summary, run_dir))
    except BaseException as exc:
        manifest.finish("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    manifest.finish("complete", seconds=round(time.perf_counter() - started, 1))
    return run_dir


def register(app: typer.Typer) -> None:
    """Add the `train` command."""

    @app.command("train")
    def train_command(
        config: Annotated[
            Path | None, typer.Argument(help="Experiment YAML with one trainable intervention.")
        ] = None,
        set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config field.")] = None,
        out: Annotated[Path | None, typer.Option("--out", help="Root directory for the run.")] = None,
        resume: Annotated[
            Path | None, typer.Option("--resume", help="Continue an interrupted training run.")
        ] = None,
    ) -> None:
        """Train a DAS intervention (IIT); writes metrics, plots and an intervention bundle."""
        from ivx.config import ConfigError
        from ivx.models import ModelLoadError

        if config is None and resume is None:
            typer.echo("error: give CONFIG or --resume RUN_DIR", err=True)
            raise typer.Exit(2)
        try:
            run_dir = train_run(
                config or Path(),
                tuple(set_ or ()),
                str(out) if out else None,
                resume,
                lambda m: typer.echo(m, err=True),
            )
        except ConfigError as exc:
            for problem in exc.problems:
                typer.echo(problem.format(), err=True)
            raise typer.Exit(2) from None
        except (ModelLoadError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        from ivx import train_report

        summary = json.loads((run_dir / "summary.json").read_text())
        typer.echo(train_report.iia_table(summary), err=True)
        if (run_dir / "controls.txt").is_file():
            typer.echo((run_dir / "controls.txt").read_text().rstrip(), err=True)
        for warning in summary.get("warnings", []):
            typer.echo(f"warning: {warning}", err=True)
        typer.echo(str(run_dir))
