"""`ivx generate`: text generation with and without an intervention (steering, patching, ablation).

Positions always refer to the unpadded prompt (token 0 = its first token), with or without the
KV cache: with the cache, prompt-position edits happen once during the prompt's forward pass and
live on in the cached keys/values; without it, every step recomputes the whole sequence and the
same edits are applied again, so both give identical tokens. `on: generated` edits every newly
generated token; `on: all` does both.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import torch

    from ivx.components import Site
    from ivx.schema import Experiment, Generate


@dataclass(frozen=True)
class Resolved:
    """One intervention ready for generation: site, edit, and per-prompt positions/sources."""

    name: str
    site: Site
    on: str
    fn: Any
    positions: tuple[tuple[int, ...], ...]  # per prompt, unpadded prompt positions
    sources: tuple[Any, ...]  # per prompt: [n_pos, dim] tensor, or None
    vector: Any  # [dim] tensor for generated positions (steering), or None
    heads: tuple[int, ...] | None
    subspace: tuple[int, ...] | None


def _capture(lm: Any, site: Site, text: str, bos: bool = False) -> torch.Tensor:
    """The component at `site` for every token of `text` (BOS first when `bos`): [seq, dim]."""
    import torch

    from ivx import hooks, tokenization

    ids = torch.tensor([tokenization.ids(lm.tokenizer, text, bos)], device=lm.device)
    with torch.inference_mode(), hooks.capturing(lm.model, [site]) as store:
        lm.model(input_ids=ids)
    return store[site][0]


def contrast_vector(lm: Any, site: Site, contrast: Any, base_dir: Path, bos: bool = False) -> torch.Tensor:
    """ActAdd: activation(positive) − activation(negative), or the mean over a JSONL of pairs."""
    import torch

    if contrast.file is not None:
        path = base_dir / contrast.file
        pairs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        pairs = [{"positive": contrast.positive, "negative": contrast.negative}]

    def pick(acts: torch.Tensor) -> torch.Tensor:
        return acts[-1] if contrast.position == "last" else acts.mean(0)

    diffs = [
        pick(_capture(lm, site, p["positive"], bos)) - pick(_capture(lm, site, p["negative"], bos))
        for p in pairs
    ]
    vector = torch.stack(diffs).mean(0)
    if contrast.normalize:
        vector = vector / vector.norm().clamp_min(1e-12)
    return vector


def resolve(lm: Any, exp: Experiment, records: list, base_dir: Path) -> tuple[list[Resolved], dict]:
    """Turn the config's interventions into `Resolved` ones; return them and computed vectors."""
    from ivx import components, interventions, positions, tokenization
    from ivx.vectors import load_vector

    bos = tokenization.use_bos(lm.tokenizer, exp.model.bos)
    prompts = tokenization.tokenize(lm.tokenizer, records, bos)
    out: list[Resolved] = []
    saved: dict[str, Any] = {}
    for index, iv in enumerate(exp.interventions):
        name = iv.name or f"iv{index}"
        layer = iv.layer if isinstance(iv.layer, int) else iv.layer[0]
        layer = layer + lm.info.n_layers if layer < 0 else layer
        site = components.resolve(lm.model, lm.info, iv.component, layer)
        vector = None
        if iv.contrast is not None:
            vector = contrast_vector(lm, site, iv.contrast, base_dir, bos).to(lm.device)
            saved[f"{name}.vector"] = vector.detach().cpu().contiguous()
        elif iv.vector is not None:
            vector = load_vector(iv.vector, name, base_dir).to(lm.device)
        per_prompt, sources = [], []
        for p in prompts:
            pos = positions.resolve(iv.position, p.length, p.subject_span) if iv.on != "generated" else ()
            per_prompt.append(pos)
            src = None
            if iv.kind in ("vanilla", "addition", "subtraction") and vector is None and pos:
                text = p.record.source if p.record.source is not None else p.record.base
                acts = _capture(lm, site, text, bos)
                spos = pos
                if iv.source_position is not None:
                    spos = positions.resolve(iv.source_position, acts.shape[0], p.source_subject_span)
                    spos = spos * len(pos) if len(spos) == 1 else spos
                src = acts[list(spos)]
            elif vector is not None and pos:
                src = vector.expand(len(pos), -1)
            sources.append(src)
        if iv.on != "prompt" and vector is None and iv.kind not in ("zero", "scale", "collect", "noise"):
            raise ValueError(
                f"interventions[{index}]: on: {iv.on} needs a vector (`vector` or `contrast`) — "
                "generated tokens have no source-run activation to copy"
            )
        fn = interventions.for_kind(iv.kind, value=iv.value, coefficient=iv.coefficient)
        heads = None if iv.head is None else tuple(iv.head if isinstance(iv.head, list) else [iv.head])
        out.append(
            Resolved(
                name,
                site,
                iv.on,
                fn,
                tuple(per_prompt),
                tuple(sources),
                vector,
                heads,
                tuple(iv.subspace) if iv.subspace else None,
            )
        )
    return out, saved


def _patches(
    items: list[Resolved], rows: list[int], pad: list[int], width: int, start: int, end: int
) -> list:
    """Patches for the columns [start, end) of a left-padded batch (rows map to prompts)."""
    import torch

    from ivx import hooks

    patches = []
    for item in items:
        row_idx, cols, srcs = [], [], []
        for r, prompt in enumerate(rows):
            if item.on in ("prompt", "all"):
                for k, p in enumerate(item.positions[prompt]):
                    col = pad[r] + p
                    if start <= col < end:
                        row_idx.append(r)
                        cols.append(col)
                        if item.sources[prompt] is not None:
                            srcs.append(item.sources[prompt][k])
            if item.on in ("generated", "all"):
                for col in range(max(start, width), end):
                    row_idx.append(r)
                    cols.append(col)
                    if item.vector is not None:
                        srcs.append(item.vector)
        if not row_idx:
            continue
        patches.append(
            hooks.Patch(
                site=item.site,
                rows=torch.tensor(row_idx),
                positions=torch.tensor(cols),
                fn=item.fn,
                source=torch.stack(srcs) if srcs else None,
                heads=item.heads,
                subspace=item.subspace,
                offset=start,
            )
        )
    return patches


def _choose(logits: torch.Tensor, settings: Generate, gen: torch.Generator) -> torch.Tensor:
    import torch

    if not settings.do_sample:
        return logits.argmax(-1)
    logits = logits / settings.temperature
    if settings.top_k is not None:
        kth = torch.topk(logits, min(settings.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if settings.top_p is not None:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, -1).cumsum(-1)
        drop = cum - torch.softmax(sorted_logits, -1) > settings.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(-1)


def run_generation(
    lm: Any,
    texts: list[str],
    items: list[Resolved],
    settings: Generate,
    seed: int,
    stream: Any = None,
    bos: bool = False,
) -> list[dict[str, Any]]:
    """Generate for every prompt (× num_return_sequences) with `items` applied; left padding."""
    import torch

    from ivx import hooks, kvcache, tokenization

    tok = lm.tokenizer
    rows = [i for i in range(len(texts)) for _ in range(settings.num_return_sequences)]
    prompt_ids = [tokenization.ids(tok, texts[i], bos) for i in rows]
    width = max(len(p) for p in prompt_ids)
    pad = [width - len(p) for p in prompt_ids]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([[pad_id] * pad[r] + p for r, p in enumerate(prompt_ids)], device=lm.device)
    mask = torch.tensor([[0] * pad[r] + [1] * len(p) for r, p in enumerate(prompt_ids)], device=lm.device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    eos = tok.eos_token_id
    done = torch.zeros(len(rows), dtype=torch.bool)
    chosen: list[list[int]] = [[] for _ in rows]
    probs: list[list[float]] = [[] for _ in rows]
    past = None
    streamed = ""
    with torch.inference_mode():
        for _ in range(settings.max_new_tokens):
            total = ids.shape[1]
            start = total - 1 if (settings.use_cache and past is not None) else 0
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, start:]
            patches = _patches(items, rows, pad, width, start, total)
            cached = {kvcache.argument(lm.model.forward): past} if past is not None else {}
            with hooks.patching(lm.model, patches):
                out = lm.model(
                    input_ids=ids[:, start:],
                    attention_mask=mask,
                    position_ids=position_ids,
                    use_cache=settings.use_cache,
                    **cached,
                )
            past = kvcache.returned(out) if settings.use_cache else None
            logits = out.logits[:, -1].float()
            next_ids = _choose(logits, settings, gen).cpu()
            p_next = torch.softmax(logits, -1).cpu().gather(1, next_ids[:, None]).squeeze(1)
            next_ids = torch.where(done, torch.full_like(next_ids, pad_id), next_ids)
            for r in range(len(rows)):
                if not done[r]:
                    chosen[r].append(int(next_ids[r]))
                    probs[r].append(round(float(p_next[r]), 6))
            if stream is not None and len(rows) == 1 and not done[0]:
                text = tok.decode(chosen[0], skip_special_tokens=True)
                stream(text[len(streamed) :])
                streamed = text
            if eos is not None:
                done |= next_ids == eos
            for r in range(len(rows)):
                text = tok.decode(chosen[r])
                if any(s in text for s in settings.stop):
                    done[r] = True
            ids = torch.cat([ids, next_ids[:, None].to(lm.device)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            if bool(done.all()):
                break
    results = []
    for r, prompt in enumerate(rows):
        text = tok.decode(chosen[r], skip_special_tokens=True)
        for s in settings.stop:
            if s in text:
                text = text[: text.index(s)]
        results.append({"prompt_index": prompt, "token_ids": chosen[r], "text": text, "probs": probs[r]})
    return results


def generate_run(
    config: Path | None,
    overrides: tuple[str, ...],
    out_root: str | None,
    quick: dict[str, Any] | None = None,
    echo: Any = None,
) -> Path:
    """The `ivx generate` recipe: config → model → both generations → run directory."""
    import torch
    import yaml
    from safetensors.torch import save_file

    from ivx import config as config_mod
    from ivx import models, rundir, tokenization
    from ivx.schema import Generate

    if quick is not None:
        config = _quick_config(quick)
    assert config is not None
    cfg = config_mod.load(config, overrides)
    exp = cfg.experiment
    settings = exp.generate or Generate()
    seed = settings.seed if settings.seed is not None else exp.seed
    spec = exp.model
    lm = models.load_spec(spec)
    torch.manual_seed(seed)
    items, vectors = resolve(lm, exp, cfg.records, cfg.path.parent)
    run_dir = rundir.create(out_root or exp.output.root, exp.name)
    rundir.write_text(run_dir / "config.yaml", cfg.text)
    rundir.write_text(run_dir / "resolved.yaml", yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False))
    manifest = rundir.Manifest.start(
        run_dir,
        name=exp.name,
        kind="generate",
        model={
            "name": spec.name,
            "revision": spec.revision,
            "d_model": lm.info.d_model,
            "n_layers": lm.info.n_layers,
        },
        seed=seed,
        device=str(lm.device),
    )
    try:
        texts = [r.base for r in cfg.records]
        started = time.perf_counter()
        bos = tokenization.use_bos(lm.tokenizer, spec.bos)
        plain = run_generation(lm, texts, [], settings, seed, bos=bos)
        stream = (lambda s: echo(s, nl=False, err=True)) if settings.stream and echo else None
        steered = run_generation(lm, texts, items, settings, seed, stream, bos)
        if stream:
            echo("", err=True)
        lines = []
        for a, b in zip(plain, steered, strict=True):
            record = cfg.records[a["prompt_index"]]
            lines.append(
                json.dumps(
                    {
                        "prompt_index": a["prompt_index"],
                        "prompt": record.base,
                        "settings": settings.model_dump(),
                        "seed": seed,
                        "unintervened": {k: a[k] for k in ("text", "token_ids", "probs")},
                        "intervened": {k: b[k] for k in ("text", "token_ids", "probs")},
                    }
                )
            )
        rundir.write_text(run_dir / "generations.jsonl", "\n".join(lines) + "\n")
        if vectors:
            save_file(vectors, str(run_dir / "interventions.safetensors"))
            interventions = [iv.model_dump(mode="json", exclude_none=True) for iv in exp.interventions]
            for iv in interventions:
                iv.pop("contrast", None)
                iv["vector"] = "interventions.safetensors"
            rundir.write_text(
                run_dir / "interventions.yaml", yaml.safe_dump({"interventions": interventions})
            )
        if echo is not None:
            _table(cfg.records, plain, steered)
    except BaseException as exc:
        manifest.finish("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    manifest.finish("complete", seconds=round(time.perf_counter() - started, 3))
    return run_dir


def _table(records: list, plain: list[dict], steered: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("prompt", "unintervened", "intervened", show_lines=True)
    for a, b in zip(plain, steered, strict=True):
        table.add_row(records[a["prompt_index"]].base, a["text"], b["text"])
    Console(stderr=True).print(table)


def _quick_config(quick: dict[str, Any]) -> Path:
    import tempfile

    import yaml

    ivs = []
    if quick.get("intervention"):
        path = Path(quick["intervention"])
        from ivx.config import parse

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


def register(app: typer.Typer) -> None:
    """Add the `generate` command."""

    @app.command("generate")
    def generate_command(
        config: Annotated[
            Path | None, typer.Argument(help="Experiment YAML with a `generate:` section.")
        ] = None,
        model: Annotated[str | None, typer.Option(help="Quick mode: model (hub id, dir, ivx-toy).")] = None,
        prompt: Annotated[list[str] | None, typer.Option(help="Quick mode: prompt (repeatable).")] = None,
        intervention: Annotated[
            Path | None, typer.Option(help="Quick mode: YAML with intervention(s).")
        ] = None,
        max_new_tokens: Annotated[int, typer.Option(help="Quick mode: tokens to generate.")] = 20,
        set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config field.")] = None,
        out: Annotated[Path | None, typer.Option("--out", help="Root directory for the run.")] = None,
    ) -> None:
        """Generate text with and without the intervention; print both side by side."""
        from ivx.config import ConfigError
        from ivx.models import ModelLoadError
        from ivx.positions import PositionError

        quick = None
        if config is None:
            if not model or not prompt:
                typer.echo("error: give CONFIG, or --model and --prompt (and --intervention)", err=True)
                raise typer.Exit(2)
            quick = {
                "model": model,
                "prompts": prompt,
                "intervention": intervention,
                "max_new_tokens": max_new_tokens,
            }
        try:
            run_dir = generate_run(config, tuple(set_ or ()), str(out) if out else None, quick, typer.echo)
        except ConfigError as exc:
            for problem in exc.problems:
                typer.echo(problem.format(), err=True)
            raise typer.Exit(2) from None
        except (ModelLoadError, PositionError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(str(run_dir))
