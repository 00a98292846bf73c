"""Smoke tests on the real GPT-2 small with its real tokenizer (needs the Hugging Face Hub or a cached
gpt2; deselected by default, run with `python -m pytest -m hub`; skipped cleanly when unreachable)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ivx.cli.app import app

pytestmark = pytest.mark.hub
ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture(scope="module")
def gpt2_reachable() -> None:
    """Skip unless gpt2's files can be fetched (or are cached)."""
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download("gpt2", "config.json", etag_timeout=5)
    except Exception as exc:  # noqa: BLE001 - offline, DNS, proxy: all mean "no Hub here"
        pytest.skip(f"gpt2 not reachable: {type(exc).__name__}")


def _run(config: str, tmp_path: Path, *overrides: str) -> dict:
    args = ["run", str(ROOT / "configs" / config), "--out", str(tmp_path), "--quiet"]
    for item in overrides:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads((Path(result.output.strip().splitlines()[-1]) / "summary.json").read_text())


def test_gpt2_causal_trace_peaks_at_the_last_subject_token(gpt2_reachable, tmp_path: Path) -> None:
    summary = _run("causal_trace_gpt2.yaml", tmp_path, "output.plots=false")
    seattle = summary["prompts"][0]
    assert not seattle["bos"] and seattle["target_tokens"] == ["ĠSeattle"]
    assert seattle["clean"]["target_prob"] > seattle["corrupted"]["target_prob"]
    cats = summary["trace"]["components"]["mlp_output"]["by_category"]
    n_layers = summary["trace"]["n_layers"]
    last_subject = cats["subject_last"]["mean"]
    peak = max(range(n_layers), key=lambda layer: last_subject[layer])
    assert 0 < peak < n_layers - 2  # ROME: the MLP effect at the last subject token sits in early-mid layers
    assert max(last_subject) > max(cats["subject_first"]["mean"])


def test_gpt2_ioi_patching_scores_the_names(gpt2_reachable, tmp_path: Path) -> None:
    summary = _run("activation_patching_gpt2.yaml", tmp_path, "output.plots=false")
    mary = summary["prompts"][0]
    assert mary["target_tokens"] == ["ĠMary"] and mary["foil_tokens"] == ["ĠJohn"]
    # the reference ("clean") run is the source prompt, whose answer is the target ' Mary'
    assert mary["corrupted"]["logit_diff"] < 0 < mary["clean"]["logit_diff"]
    last = {(g["layer"], g["position"]): g for g in summary["grid"]}
    n_layers = max(layer for layer, _ in last) + 1
    final = last[(n_layers - 1, len(mary["tokens"]) - 1)]
    # the final block's output at the last position is all the logits see: patching it gives the source run
    assert final["logit_diff_norm"] == pytest.approx(1.0, abs=1e-4)
