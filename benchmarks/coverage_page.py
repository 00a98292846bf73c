"""The coverage table as terminal lines and as the markdown page `docs/coverage.md`."""

from __future__ import annotations

import datetime
from collections import Counter
from importlib import metadata
from typing import Any

INTRO = """\
# Architecture coverage

Which causal LMs ivx can patch exactly, measured rather than claimed. For every architecture in
transformers' causal-LM mapping, `benchmarks/coverage.py` builds a tiny random model from its
config class (2 layers, width 64, 4 heads, vocabulary 256, 4 experts; seed 0), lists its
components as `ivx components` does, and patches each one from a source prompt at every layer and
two positions (head components one head at a time) through ivx's Python API — with the defaults,
then with every exact shortcut off (`batch.prefix_reuse`, `layer_reuse`, `defer_head`,
`trim_final`, `skip_noop` all false). Every cell's last-position logits are compared with a
hand-written PyTorch hook doing the same replacement in a plain forward (`benchmarks/coverage_oracle.py`);
`block_output` is also checked against `output_hidden_states`. A cell is exact when the largest
absolute logit difference is at most 1e-4 (ivx runs many cells per forward, the oracle one).
`head_attention_pattern` is checked separately (`tests/model/test_attention_pattern.py`).

Regenerate: `python benchmarks/coverage.py --json benchmarks/coverage_rows.json --write
docs/coverage.md` (about twenty minutes on two busy cores); one architecture: `python
benchmarks/coverage.py --arch mamba`; re-check some and keep the other rows: add
`--rows benchmarks/coverage_rows.json --arch mamba --arch bamba`. The tests run a fixed
subset, one per family (`tests/model/test_coverage.py`), and the whole table in the slow tier.
Components not in the table's vocabulary can still be reached by module path
([module_paths.md](module_paths.md)).

Status: **exact** — every listed component exact with and without shortcuts; **mismatch** — some
component differs from the oracle (the column says which and by how much); **error** — ivx
raised (the reason is quoted); **refused** — ivx declines the architecture and says why (that
message is what a user gets); **unbuilt** — no tiny model could be made from the config class on
this machine (the reason is quoted: a missing package, a config the generic shrinking breaks, a
multimodal wrapper).

What the table does not list, and why:

- **Mixture-of-experts**: `mlp_output` is the MoE block's output (every routed expert, weighted,
  plus shared experts), exact with the routing of the patched run. Single experts' outputs and the
  router logits are not components: transformers 5 runs all experts in one fused module (its
  forward loops over experts and `index_add`s their outputs), and a router returns the routing it
  computed from its logits in the same call, so neither is a tensor a hook can replace with effect.
  `mlp_activation` is not listed for MoE blocks (there is no single down projection).
- **DeepSeek-V4** keeps `hc_mult` residual streams per position (hyper-connections: `[batch, seq,
  4, hidden]` between blocks), so `block_input` / `block_output` are not listed; its attention and
  MLP components are.
- **Refused with the reason** (`model/discovery.py`): CPM-Ant and ProphetNet (their blocks' positions
  are not the prompt's tokens: learned prompt positions, n-gram streams), HRM (blocks run several
  times per forward), XLM (no blocks: per-layer lists of attentions and feed-forwards), XLNet
  (two-stream attention over a permutation, not a causal stack).
- **Multimodal wrappers** (`*ForConditionalGeneration` in the causal-LM mapping: Gemma 3, Fuyu,
  GOT-OCR2, …) are patched in their language model's blocks.
- **CUDA-only kernels**: none found — where transformers has a fused kernel (xIELU,
  `causal_conv1d`, the Mamba kernels) it falls back to a PyTorch path on CPU, and the table measures
  that path.
"""


def _components(result: Any) -> str:
    verdicts = result.components
    if not verdicts:
        return ""
    bad: dict[str, list[str]] = {}  # verdict → components
    for comp, verdict in sorted(verdicts.items()):
        if verdict != "exact":
            bad.setdefault(verdict, []).append(f"`{comp}`")
    text = f"{len(verdicts) - sum(map(len, bad.values()))}/{len(verdicts)} exact"
    return text + "".join(f"; {', '.join(comps)}: {verdict}" for verdict, comps in bad.items())


def _shortcuts(result: Any) -> str:
    on = [n for n, s in result.shortcuts.items() if s == "on"]
    off = [f"{n} off ({s})" for n, s in result.shortcuts.items() if s != "on"]
    if not result.shortcuts:
        return ""
    return ", ".join(on) + ("; " if on and off else "") + "; ".join(off)


def line(result: Any) -> str:
    """One terminal line: status, architecture, components, shortcuts or reason."""
    detail = result.reason or f"{_components(result)} | {_shortcuts(result)}"
    return f"{result.status:8s} {result.model_type:28s} {result.seconds:5.1f}s  {detail}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(results: list[Any]) -> str:
    """The whole page: how it was measured, the counts, one row per architecture."""
    version = metadata.version("transformers")
    today = datetime.date.today().isoformat()
    counts = Counter(r.status for r in results)
    passing = [r for r in results if r.status == "exact"]
    all_on = sum(1 for r in passing if r.shortcuts and all(s == "on" for s in r.shortcuts.values()))
    lines = [
        INTRO,
        f"Measured on transformers {version}, torch {metadata.version('torch')}, {today}: "
        f"{len(results)} architectures — "
        + ", ".join(f"{counts[s]} {s}" for s in ("exact", "mismatch", "error", "refused", "unbuilt") if counts[s])
        + f". Of the {len(passing)} exact ones, {all_on} run with every exact shortcut engaged.",
        "",
        "| architecture | status | layout | components | shortcuts engaged (defaults) / reason |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        last = r.reason or _shortcuts(r)
        lines.append(f"| `{r.model_type}` | {r.status} | {r.layout} | {_cell(_components(r))} | {_cell(last)} |")
    return "\n".join(lines) + "\n"
