"""A run warns when its corruption barely changes the answer (effects are then noise)."""

from __future__ import annotations

from ivx.results.summary import contrast_warnings as _contrast_warnings


def _prompt(clean_ld: float, corrupted_ld: float, clean_p: float = 0.9, corrupted_p: float = 0.1) -> dict:
    return {
        "clean": {"logit_diff": clean_ld, "target_prob": clean_p},
        "corrupted": {"logit_diff": corrupted_ld, "target_prob": corrupted_p},
    }


def test_warns_when_clean_and_corrupted_agree() -> None:
    prompts = [_prompt(12.58, 12.57) for _ in range(9)] + [_prompt(5.0, -5.0)]
    (warning,) = _contrast_warnings(prompts, ["logit_diff", "logit_diff_norm"])
    assert warning.startswith("9 of 10 prompts") and "logit_diff" in warning
    # target_prob gaps are large here, so indirect effects are fine
    assert _contrast_warnings(prompts, ["indirect_effect"]) == []


def test_quiet_when_the_corruption_works_or_the_metric_needs_no_contrast() -> None:
    assert _contrast_warnings([_prompt(5.0, -4.0) for _ in range(10)], ["logit_diff_norm"]) == []
    assert _contrast_warnings([_prompt(1.0, 1.0) for _ in range(10)], ["logit_diff", "target_prob"]) == []
    # a few weak prompts (at most 20%) are normal in a dataset
    prompts = [_prompt(5.0, -4.0, 0.9, 0.88)] * 2 + [_prompt(5.0, -4.0)] * 8
    assert _contrast_warnings(prompts, ["indirect_effect"]) == []
