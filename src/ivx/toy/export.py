"""Export the toy world's datasets as JSONL prompt records under configs/data/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ivx.toy import world as toy_world
from ivx.toy.train import accuracy


def _write(path: Path, records: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def export(out: Path, seed: int = 0, model: Any = None, tokenizer: Any = None) -> dict[str, int]:
    """Write facts.jsonl, ioi.jsonl and city_swap.jsonl; with a model, keep facts it gets right."""
    world = toy_world.build(seed)
    out.mkdir(parents=True, exist_ok=True)
    template = toy_world.FACT_TEMPLATES["city"][1][0]
    facts = [
        {"base": template.format(s=s.name), "subject": s.name, "target": " " + s.get("city")}
        for s in world.subjects
    ]
    if model is not None:
        facts = [r for r in facts if accuracy(model, tokenizer, [r]) == 1.0]
    counts = {"facts.jsonl": len(facts[:200])}
    _write(out / "facts.jsonl", facts[:200])
    ioi = toy_world.ioi_patching_records(world, 100, seed)
    _write(out / "ioi.jsonl", ioi)
    counts["ioi.jsonl"] = len(ioi)
    swap = toy_world.city_swap_records(world, 400, seed)
    _write(out / "city_swap.jsonl", swap)
    counts["city_swap.jsonl"] = len(swap)
    return counts
