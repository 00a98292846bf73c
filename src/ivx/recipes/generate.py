"""`ivx generate`: text generation with and without an intervention (steering, patching, ablation).

The interventions are planned like any run (`plan.expand` in generate mode: layer lists,
windows, `all`, heads, source positions, sweeps), then bound to tensors here — source-run
activations, steering vectors (`vector`, or `contrast` prompts: ActAdd), noise — and decoded by
`ivx.decoding`. A sweep generates once per grid point.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ivx.config.loader import LoadedConfig, parse
from ivx.config.settings import Generate
from ivx.engine.binding import Binder, multi_site
from ivx.engine.decoding import Bound, run_generation
from ivx.plan import grid as plan
from ivx.plan import tokenization
from ivx.plan.prepared import Prepared
from ivx.recipes.prepare import prepare_all
from ivx.results import rundir

if TYPE_CHECKING:
    from ivx.config.inputs import PromptRecord
    from ivx.config.schema import Experiment
    from ivx.model.loading import LoadedModel
    from ivx.plan.grid import Cell

__all__ = ["generate_run", "resolve"]


def resolve(
    lm: LoadedModel, exp: Experiment, records: list[PromptRecord], base_dir: Path
) -> tuple[list[Bound], dict[str, Any]]:
    """Plan and bind an experiment's interventions for `records` (no sweep); also the computed vectors."""

    if exp.sweep:
        raise ValueError("generate.resolve binds one grid point; a sweep goes through generate_run")
    cfg = LoadedConfig(exp, base_dir / "<experiment>", {}, "", records=list(records))
    bos = tokenization.use_bos(lm.tokenizer, exp.model.bos)
    prompts = tokenization.tokenize(lm.tokenizer, list(records), bos)
    cells = plan.expand(cfg, lm.info, prompts, mode="generate").cells
    binder = Binder(lm, cfg, bos, multi_site(cells))
    items = [b for cell in cells for b in binder.bind(cell.prompt, prompts[cell.prompt], cell.edits)]
    return items, binder.saved


def _by_point(cells: Sequence[Cell]) -> list[list[Cell]]:
    """Cells grouped by grid point, in plan order."""
    groups: dict[tuple[tuple[str, Any], ...], list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.point, []).append(cell)
    return list(groups.values())


def _bind_all(prep: Prepared, bos: bool) -> tuple[list[tuple[list[Cell], list[Bound]]], dict[str, Any]]:
    """Every grid point's cells with their bound items (vectors, sources), and the computed vectors."""
    cells = prep.plan.cells
    binder = Binder(prep.lm, prep.cfg, bos, multi_site(cells))
    groups = []
    for group in _by_point(cells):
        items = [b for i, c in enumerate(group) for b in binder.bind(i, prep.prompts[c.prompt], c.edits)]
        groups.append((group, items))
    return groups, binder.saved


def _generations(
    prep: Prepared,
    groups: list[tuple[list[Cell], list[Bound]]],
    seed: int,
    stream: Callable[[str], object] | None,
    bos: bool,
) -> list[dict[str, Any]]:
    """Both continuations of every prompt at every grid point."""

    settings = prep.cfg.experiment.generate or Generate.model_validate({})
    texts = [r.base for r in prep.cfg.records]
    plain_of: dict[int, list[dict[str, Any]]] = {}
    for row in run_generation(prep.lm, texts, [], settings, seed, bos=bos):
        plain_of.setdefault(row["prompt_index"], []).append(row)
    pairs = []
    for group, items in groups:
        steered = run_generation(
            prep.lm, [texts[c.prompt] for c in group], items, settings, seed, stream, bos
        )
        seen: dict[int, int] = {}
        for row in steered:
            prompt = group[row["prompt_index"]].prompt
            k = seen[prompt] = seen.get(prompt, -1) + 1
            point = dict(group[0].point)
            pairs.append({"point": point, "plain": plain_of[prompt][k], "steered": row, "prompt": prompt})
    return pairs


def _line(prep: Prepared, pair: dict[str, Any], seed: int) -> str:

    keys = ("text", "token_ids", "probs")
    row = {
        "prompt_index": pair["prompt"],
        **({"point": pair["point"]} if pair["point"] else {}),
        "prompt": prep.cfg.records[pair["prompt"]].base,
        "settings": (prep.cfg.experiment.generate or Generate.model_validate({})).model_dump(),
        "seed": seed,
        "unintervened": {k: pair["plain"][k] for k in keys},
        "intervened": {k: pair["steered"][k] for k in keys},
    }
    return json.dumps(row)


def _save_vectors(run_dir: Path, exp: Experiment, vectors: dict[str, Any]) -> None:
    """Computed steering vectors, and the interventions that load them from the run."""
    import yaml
    from safetensors.torch import save_file

    save_file(vectors, str(run_dir / "interventions.safetensors"))
    interventions = [iv.model_dump(mode="json", exclude_none=True) for iv in exp.interventions]
    for iv in interventions:
        iv.pop("contrast", None)
        iv["vector"] = "interventions.safetensors"
    rundir.write_text(run_dir / "interventions.yaml", yaml.safe_dump({"interventions": interventions}))


def generate_run(
    config: Path | None,
    overrides: tuple[str, ...],
    out_root: str | None,
    quick: dict[str, Any] | None = None,
    echo: Callable[..., object] | None = None,
    max_cells: int | None = None,
) -> Path:
    """The `ivx generate` recipe: prepare (as `ivx validate --for generate` does) → bind → both
    generations → run directory."""
    import torch
    import yaml

    config = _quick_config(quick) if quick is not None else config
    if config is None:
        raise ValueError("give CONFIG, or --model and --prompt (and --intervention)")
    (prep,) = prepare_all(config, overrides, max_cells=max_cells, mode="generate")
    exp, spec, lm = prep.cfg.experiment, prep.cfg.experiment.model, prep.lm
    bos = tokenization.use_bos(lm.tokenizer, spec.bos)
    settings = exp.generate or Generate.model_validate({})
    seed = settings.seed if settings.seed is not None else exp.seed
    torch.manual_seed(seed)
    groups, vectors = _bind_all(prep, bos)  # user errors (vectors, bundles) before the run directory
    run_dir = rundir.create(out_root or exp.output.root, exp.name)
    rundir.write_text(run_dir / "config.yaml", prep.cfg.text)
    rundir.write_text(run_dir / "resolved.yaml", yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False))
    model = {
        "name": spec.name,
        "revision": spec.revision,
        "d_model": lm.info.d_model,
        "n_layers": lm.info.n_layers,
    }
    manifest = rundir.Manifest.start(
        run_dir, name=exp.name, kind="generate", model=model, seed=seed, device=str(lm.device)
    )
    try:
        started = time.perf_counter()
        stream = (lambda s: echo(s, nl=False, err=True)) if settings.stream and echo else None
        pairs = _generations(prep, groups, seed, stream, bos)
        if stream and echo is not None:
            echo("", err=True)
        rundir.write_text(run_dir / "generations.jsonl", "".join(_line(prep, p, seed) + "\n" for p in pairs))
        if vectors:
            _save_vectors(run_dir, exp, vectors)
        if echo is not None:
            _table(prep.cfg.records, pairs)
    except BaseException as exc:
        manifest.finish("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    manifest.finish("complete", seconds=round(time.perf_counter() - started, 3))
    return run_dir


def _table(records: Sequence[PromptRecord], pairs: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    points = any(p["point"] for p in pairs)
    table = Table(*(["point"] if points else []), "prompt", "unintervened", "intervened", show_lines=True)
    for p in pairs:
        cells = [records[p["prompt"]].base, p["plain"]["text"], p["steered"]["text"]]
        table.add_row(*([", ".join(f"{k}={v}" for k, v in p["point"].items())] if points else []), *cells)
    Console(stderr=True).print(table)


def _quick_config(quick: dict[str, Any]) -> Path:
    import tempfile

    import yaml

    ivs = []
    if quick.get("intervention"):
        path = Path(quick["intervention"])

        data = parse(path.read_text())
        ivs = data.get("interventions", data) if isinstance(data, dict) else data
        ivs = ivs if isinstance(ivs, list) else [ivs]
        for iv in ivs:  # relative files inside the intervention YAML are relative to it
            for key in ("vector",):
                if isinstance(iv.get(key), str) and not iv[key].startswith("hf://"):
                    iv[key] = str((path.parent / iv[key]).resolve())
            if isinstance(iv.get("contrast"), dict) and iv["contrast"].get("file"):
                iv["contrast"]["file"] = str((path.parent / iv["contrast"]["file"]).resolve())
    data = {
        "name": "generate",
        "model": {"name": quick["model"]},
        "prompts": [{"base": p} for p in quick["prompts"]],
        "interventions": ivs,
        "generate": {"max_new_tokens": quick["max_new_tokens"], "stream": len(quick["prompts"]) == 1},
    }
    tmp = Path(tempfile.mkdtemp(prefix="ivx-generate-")) / "generate.yaml"
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    return tmp
