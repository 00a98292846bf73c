"""How far ivx reaches: every causal-LM architecture in the installed transformers, checked.

For each `model_type` in `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES` this builds a tiny random model
(`coverage_models.build`: layers 2, width 64, heads 4, vocabulary 256, experts 4, seed 0), loads
it with `ivx.Model`, lists its components (`ivx components`) and patches every one of them — at
every layer and two positions, head components one head at a time — from a source prompt, with
ivx's defaults and then with every exact shortcut off. Each cell's last-position logits are
compared with a hand-written hook doing the same replacement (`coverage_oracle`), and
`block_input` / `block_output` with `output_hidden_states`. The manifest says which shortcuts
engaged. An architecture that cannot be built or loaded is listed with the reason.

    python benchmarks/coverage.py --arch llama --arch mamba     # a few, printed
    python benchmarks/coverage.py --write docs/coverage.md      # the whole table (~30 min on 2 busy cores)
    python benchmarks/coverage.py --rows rows.json --arch bamba --json rows.json --write docs/coverage.md
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import coverage_models  # noqa: E402
import coverage_oracle as oracle  # noqa: E402
import coverage_page  # noqa: E402

from ivx.model.components import ComponentError  # noqa: E402

BASE = "When Mary and John went to the store , John gave a drink to"
SOURCE = "When Tom and James went to the park , James gave a ball to"
POSITIONS = (2, 9)
HEAD = 1
ATOL = 1e-4  # float32 logits of a width-64 model; ivx batches cells, the oracle runs one at a time
OFF = {
    "prefix_reuse": False,
    "layer_reuse": False,
    "defer_head": False,
    "trim_final": False,
    "skip_noop": False,
}
SKIPPED = (
    "head_attention_pattern",
)  # probabilities, not a tensor a module returns: tests/model/test_attention_pattern.py
SHORTCUTS = ("prefix_reuse", "layer_reuse", "defer_head", "trim_final")


@dataclass
class Result:
    """One architecture's row of the coverage table."""

    model_type: str
    status: str  # exact | mismatch | error | unbuilt
    reason: str = ""
    layout: str = ""
    components: dict[str, str] = field(default_factory=dict)  # name → exact | mismatch (diff) | error: ...
    shortcuts: dict[str, str] = field(default_factory=dict)  # name → on | reason it is off
    max_diff: float = 0.0
    seconds: float = 0.0


def _short(error: BaseException, limit: int = 160) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:limit]}"


def _config(
    lm_dir: Path, comps: list[str], head: bool, out: str, batch: dict[str, bool], layers: list[int]
) -> dict[str, Any]:
    """An ivx experiment patching `comps` at `layers` × POSITIONS from the source prompt."""
    layer: Any = [0] if comps == ["embedding"] else layers
    iv = {"kind": "vanilla", "component": "$component", "layer": "$layer", "position": "$position"}
    return {
        "name": "coverage",
        "model": {"name": str(lm_dir), "bos": False},
        "prompts": [{"base": BASE, "source": SOURCE}],
        "sweep": {"component": comps, "layer": layer, "position": list(POSITIONS)},
        "interventions": [{**iv, "source": "source", **({"head": HEAD} if head else {})}],
        "metrics": ["top_k"],
        "batch": batch,
        "output": {"root": out, "logits": "last", "plots": False, "report": False},
    }


def _ivx_cells(model: Any, cfg: dict[str, Any]) -> tuple[dict[tuple[str, int, int], Any], dict[str, Any]]:
    """(component, layer, position) → ivx's patched last-position logits, and the manifest."""
    run = model.run(cfg)
    tensors = run.tensors
    cells = {
        (row.component, int(row.layer), int(row.position)): tensors[f"cell{int(row.cell)}"].float()
        for row in run.results.itertuples()
    }
    return cells, run.manifest


def _groups(info: Any) -> list[tuple[list[str], bool, list[int]]]:
    """The runs one setting needs: plain components, head components (one head), the embedding;
    each at the layers where it exists (a hybrid's blocks differ by layer)."""
    comps = [c for c in info.components if c not in SKIPPED]
    groups: dict[tuple[bool, tuple[int, ...]], list[str]] = {}
    for comp in comps:
        layers = tuple(i for i in range(info.n_layers) if not info.layers or comp in info.layers[i])
        key = (comp.startswith("head_"), (0,) if comp == "embedding" else layers)
        groups.setdefault(key, []).append(comp)
    embedding = groups.pop((False, (0,)), []) if "embedding" in comps else []
    rest = [(g, head, list(layers)) for (head, layers), g in groups.items()]
    return rest + ([(embedding, False, [0])] if embedding else [])


def _check_cells(model: Any, lm: Any, cells: dict, head: bool, ids: tuple[Any, Any]) -> dict[str, float]:
    """Largest |ivx − oracle| per component over its cells."""
    from ivx.model import components

    base_ids, source_ids = ids
    worst: dict[str, float] = {}
    for (comp, layer, pos), logits in cells.items():
        site = components.resolve(lm.model, lm.info, comp, layer)
        source = oracle.capture(lm.model, site, source_ids)
        expected = oracle.patched_logits(lm.model, site, base_ids, source, pos, HEAD if head else None)
        diff = float((logits - expected).abs().max())
        worst[comp] = max(worst.get(comp, 0.0), diff)
    return worst


def _blocks_match(lm: Any, ids: Any) -> str:
    """'' when block_input / block_output equal output_hidden_states, else what differs."""
    from ivx.model import components

    if any("block_output" not in names for names in lm.info.layers or [lm.info.components]):
        # nothing to compare (DeepSeek-V4: several residual streams per position; Mllama: its
        # cross-attention layers do not run without images and hidden_states leaves them out)
        return ""
    hs = oracle.hidden_states(lm.model, ids)
    n = lm.info.n_layers
    if len(hs) != n + 1:
        return f"output_hidden_states has {len(hs)} entries for {n} blocks"
    first = oracle.capture(lm.model, components.resolve(lm.model, lm.info, "block_input", 0), ids)[:, 0]
    shift = 1 if _close(first, hs[0][0]) else 0  # (Falcon)Mamba's hidden_states leave out the embeddings
    for layer in range(n - 1):  # the last block's output goes through the final norm first
        site = components.resolve(lm.model, lm.info, "block_output", layer)
        got = oracle.capture(lm.model, site, ids)[:, 0]
        if not _close(got, hs[layer + shift][0]):
            return f"block_output at layer {layer} differs from hidden_states[{layer + shift}]"
    return ""


def _close(a: Any, b: Any) -> bool:
    return a.shape == b.shape and bool((a.float() - b.float()).abs().max() <= ATOL)


def _setting(
    model: Any, lm: Any, lm_dir: Path, batch: dict[str, bool], out: str, ids: tuple
) -> tuple[dict, dict]:
    """Every component's verdict and the manifest's shortcuts for one batch setting."""
    verdicts: dict[str, str] = {}
    shortcuts: dict[str, Any] = {}
    for comps, head, layers in _groups(lm.info):
        more, found = _setting_one(model, lm, lm_dir, batch, out, ids, comps, head, layers)
        verdicts.update(more)
        shortcuts = shortcuts or found
    return verdicts, shortcuts


def _setting_one(
    model: Any,
    lm: Any,
    lm_dir: Path,
    batch: dict[str, bool],
    out: str,
    ids: tuple,
    comps: list[str],
    head: bool,
    layers: list[int],
) -> tuple[dict, dict]:
    """Verdicts of one run over `comps` (each component alone when the run fails)."""
    verdicts: dict[str, str] = {}
    shortcuts: dict[str, Any] = {}
    if comps:
        try:
            cells, manifest = _ivx_cells(model, _config(lm_dir, comps, head, out, batch, layers))
        except Exception as error:  # noqa: BLE001 - the table records every failure
            if len(comps) > 1:  # find which components fail
                for comp in comps:
                    more, found = _setting_one(model, lm, lm_dir, batch, out, ids, [comp], head, layers)
                    verdicts.update(more)
                    shortcuts = shortcuts or found
            else:
                verdicts[comps[0]] = f"error: {_short(error)}"
            return verdicts, shortcuts
        shortcuts = manifest.get("shortcuts", {}).get("shortcuts", {})
        for comp, diff in _check_cells(model, lm, cells, head, ids).items():
            verdicts[comp] = "exact" if diff <= ATOL else f"mismatch ({diff:.2g})"
    return verdicts, shortcuts


def check(model_type: str, root: Path, plain: bool = True) -> Result:
    """Build, load and check one architecture (every failure becomes the row's reason); `plain`:
    also with every shortcut off."""
    try:
        return _check(model_type, root, plain)
    except Exception as error:  # noqa: BLE001
        return Result(model_type, "error", reason=f"the check failed: {_short(error)}")


def _check(model_type: str, root: Path, with_plain: bool) -> Result:
    import torch

    import ivx

    start = time.perf_counter()
    result = Result(model_type, "unbuilt")
    try:
        lm_dir = coverage_models.build(model_type, root / model_type)
    except Exception as error:  # noqa: BLE001
        result.reason = f"tiny model not built: {_short(error)}"
        return result
    try:
        model = ivx.Model(str(lm_dir))
    except ComponentError as error:  # ivx's own refusal, with its reason
        result.status, result.reason = "refused", f"ivx refuses it: {_short(error, 300)}"
        return result
    except Exception as error:  # noqa: BLE001
        result.status, result.reason = "error", f"ivx cannot load it: {_short(error)}"
        return result
    lm = model.lm
    result.layout = lm.info.layout
    tok = lm.tokenizer
    ids = tuple(torch.tensor([tok(t, add_special_tokens=False)["input_ids"]]) for t in (BASE, SOURCE))
    defaults, engaged = _setting(model, lm, lm_dir, {}, str(root / "runs"), ids)
    plain = _setting(model, lm, lm_dir, OFF, str(root / "runs"), ids)[0] if with_plain else defaults
    result.components = {
        c: v if v == plain.get(c) else f"{v}; shortcuts off: {plain.get(c)}" for c, v in defaults.items()
    }
    result.shortcuts = {
        n: "on" if s.get("on") else str(s.get("why") or s.get("reason") or "off")
        for n, s in engaged.items()
        if n in SHORTCUTS
    }
    blocks = _blocks_match(lm, ids[0])
    if blocks:
        result.components["block_output"] = f"mismatch: {blocks}"
    bad = {c: v for c, v in result.components.items() if v != "exact"}
    result.status = (
        "exact" if not bad else ("error" if all(v.startswith("error") for v in bad.values()) else "mismatch")
    )
    result.seconds = time.perf_counter() - start
    return result


def architectures() -> list[str]:
    """Every causal-LM model_type of the installed transformers."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def main(argv: list[str] | None = None) -> int:
    """Check the architectures named (default: all); print one line each, optionally write the page."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", help="a model_type (repeatable); default: every one")
    parser.add_argument("--write", help="write the markdown page here (docs/coverage.md)")
    parser.add_argument("--json", help="write the rows as JSON here")
    parser.add_argument(
        "--rows", help="start from these JSON rows (a previous --json): re-check only --arch, keep the rest"
    )
    args = parser.parse_args(argv)
    rows = (
        {r["model_type"]: Result(**r) for r in json.loads(Path(args.rows).read_text())} if args.rows else {}
    )
    todo = args.arch or ([] if rows else architectures())
    with tempfile.TemporaryDirectory(prefix="ivx-coverage-") as tmp:
        for model_type in todo:
            rows[model_type] = check(model_type, Path(tmp))
            print(coverage_page.line(rows[model_type]), flush=True)
    results = [rows[m] for m in sorted(rows)]
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    if args.write:
        Path(args.write).write_text(coverage_page.render(results))
    return 0 if all(rows[m].status != "error" for m in todo) else 1


if __name__ == "__main__":
    sys.exit(main())
