"""The coverage table's checks (benchmarks/coverage.py) on one architecture per family, and on all.

Each architecture is a tiny random model built from its config class; every component
`ivx components` lists is patched at every layer × two positions from a source prompt through
`ivx.Model.run` and compared with a hand-written hook in a plain forward (benchmarks/coverage_oracle.py),
`block_output` also with `output_hidden_states`. The fast tier runs the subset with ivx's defaults
(the exact shortcuts on, the path users take); the slow tier every architecture, shortcuts on and off.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
_spec = importlib.util.spec_from_file_location("ivx_coverage_bench", ROOT / "benchmarks" / "coverage.py")
assert _spec is not None and _spec.loader is not None
coverage = importlib.util.module_from_spec(_spec)  # not `import coverage`: that name is coverage.py's
sys.modules["ivx_coverage_bench"] = coverage
_spec.loader.exec_module(coverage)

# one per family: fused qkv, parallel residual, ALiBi, multi-query, post-norm blocks (OPT-like
# fc1/fc2 on the block), a multimodal wrapper, an encoder-decoder's decoder, a BERT-style decoder, MoE,
# a flattened MoE, a gated-query hybrid
SUBSET = {
    "gpt2": {"head_query_output", "mlp_activation", "residual_mid"},
    "gpt_neox": {"head_value_output", "mlp_output"},
    "bloom": {"attention_output", "mlp_output"},
    "falcon": {"attention_output", "mlp_output"},
    "gemma3": {"block_output", "attention_output", "mlp_output"},
    "bart": {"attention_output", "mlp_input", "mlp_output"},
    "bert": {"attention_output", "mlp_output"},
    "mixtral": {"head_key_output", "mlp_output"},
    # MoE whose experts return flattened [b*s, d] tokens, patched while blocks are called directly
    "llama4_text": {"mlp_output"},
    # a hybrid whose q_proj also emits an output gate (no query components; keys, values exact)
    "qwen3_next": {"mixer_output", "attention_output", "head_key_output"},
}


def _installed(model_type: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        pytest.skip(
            f"{model_type} is not in transformers {metadata.version('transformers')}'s causal-LM mapping"
        )


@pytest.mark.parametrize("model_type", sorted(SUBSET))
def test_family_is_exact(model_type: str, tmp_path: Path) -> None:
    _installed(model_type)
    result = coverage.check(model_type, tmp_path, plain=False)
    assert result.status == "exact", coverage.coverage_page.line(result)
    assert SUBSET[model_type] <= set(result.components), sorted(result.components)
    assert {"block_input", "block_output"} <= set(result.components)
    assert set(result.shortcuts) == set(coverage.SHORTCUTS)  # what engaged is recorded, with reasons


def test_an_architecture_that_cannot_be_built_is_listed_with_the_reason(tmp_path: Path, monkeypatch) -> None:
    def broken(model_type: str, out_dir: Path, seed: int = 0) -> Path:
        raise ImportError("this architecture needs the package `timm`")

    monkeypatch.setattr(coverage.coverage_models, "build", broken)
    result = coverage.check("gpt2", tmp_path)
    assert result.status == "unbuilt" and "needs the package `timm`" in result.reason
    assert "unbuilt" in coverage.coverage_page.line(result) and "timm" in coverage.coverage_page.render(
        [result]
    )


def test_the_page_lists_every_architecture_of_its_transformers() -> None:
    page = (ROOT / "docs" / "coverage.md").read_text()
    version = re.search(r"Measured on transformers (\S+),", page)
    assert version, "docs/coverage.md says which transformers it measured"
    if version.group(1) != metadata.version("transformers"):
        pytest.skip(f"docs/coverage.md measures transformers {version.group(1)}, not the installed one")
    rows = set(re.findall(r"^\| `([^`]+)` \|", page, flags=re.M))
    assert rows == set(coverage.architectures())


@pytest.mark.slow
def test_every_architecture(tmp_path: Path) -> None:
    """No cell of any architecture differs from its oracle; every architecture that is not exact
    says why (an ivx error quoted, or why no tiny model could be built)."""
    results = [coverage.check(m, tmp_path) for m in coverage.architectures()]
    lines = "\n".join(coverage.coverage_page.line(r) for r in results)
    assert not [r for r in results if r.status == "mismatch"], lines
    assert all(r.reason or r.components for r in results if r.status != "exact"), lines
    assert sum(r.status == "exact" for r in results) >= 0.6 * len(results), lines
