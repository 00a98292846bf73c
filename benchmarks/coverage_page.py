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
docs/coverage.md` (about five minutes on one thread at load 3, 2026-12-03); one architecture: `python
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
  plus shared experts), exact with the routing of the patched run. Where a block's feed-forward
  has a fused `experts` module and a router (`gate` / `router`) whose only parameters are a
  `[experts, width]` matrix and a bias, two more components are listed at the layers that have
  them ([moe.md](moe.md)): `router_logits` (the router's linear output, before softmax / sigmoid /
  correction bias / top-k; ivx intercepts the router's own `linear` call, so an edit re-routes the
  token, and the oracle writes it by moving the router's input along the pseudo-inverse of its
  matrix) and `experts_output` (the fused experts module's output: the routed experts' weighted
  sum, before shared experts and any scaling the block applies). Not listed: single experts
  (transformers runs an expert only on the tokens routed to it, inside one fused forward, so a
  per-expert output has no value at the other positions), routers with more parameters than a
  matrix and a bias (Inkling's global scale), MoEs whose experts are not one module (JetMoE), and
  `mlp_activation` (there is no single down projection).
- **Several residual streams per position**: DeepSeek-V4 and Qwen4-Exp (hyper-connections:
  `[batch, seq, 4, hidden]` between blocks), Gemma 3n (AltUp: `[streams, batch, seq, hidden]`) and
  Reformer (two reversible streams), so `block_input` / `block_output` are not listed (nor layer
  reuse, which resumes from a block output); their attention and MLP components are.
- **Layers that do not run**: Mllama's cross-attention layers run only with images; nothing is
  listed there, and asking for them names the layers that have the component.
- **Refused with the reason** (`model/discovery.py`): CPM-Ant and ProphetNet (their blocks' positions
  are not the prompt's tokens: learned prompt positions, n-gram streams), HRM and Dory (blocks run
  several times per forward), XLM (no blocks: per-layer lists of attentions and feed-forwards),
  XLNet (two-stream attention over a permutation, not a causal stack), BLT (byte-level and
  patch-level stacks), MusicGen and MusicGen Melody (parallel audio-code streams per position),
  the Gemma 4 assistants (drafters that read the target model's KV cache).
- **Text halves saved by their own class** (Emu3, Mllama): `AutoModelForCausalLM` refuses the
  `*_text_model` config they save; ivx loads them with the causal-LM class the config names.
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
        + ", ".join(
            f"{counts[s]} {s}" for s in ("exact", "mismatch", "error", "refused", "unbuilt") if counts[s]
        )
        + f". Of the {len(passing)} exact ones, {all_on} run with every exact shortcut engaged.",
        "",
        "| architecture | status | layout | components | shortcuts engaged (defaults) / reason |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        last = r.reason or _shortcuts(r)
        lines.append(
            f"| `{r.model_type}` | {r.status} | {r.layout} | {_cell(_components(r))} | {_cell(last)} |"
        )
    return "\n".join(lines) + "\n"
