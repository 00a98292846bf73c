"""Real tokenizer conventions, offline: GPT-2 / Pythia byte-level BPE, Llama (current and Llama-2
tokenizer.json layouts) and Gemma metaspace BPE with byte fallback and BOS, each saved with a tiny
model of its architecture and loaded through `models.load`. Scored ids, subject spans, BOS and
replacement are checked against the tokenizer's own output and a hand-written forward."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ivx.cli.app import app
from ivx.config.inputs import PromptRecord
from ivx.model import loading as models
from ivx.plan import tokenization
from ivx.results.summary import scoring_warnings
from tests.tokenizers import STYLES, build

runner = CliRunner()
BOS_STYLES = ("llama3", "llama", "llama2", "gemma")
PARIS = "Parisian cafes are small, and Paris is the capital of"


@pytest.fixture(scope="module")
def styled(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """styled("llama2") → a saved tiny model with that tokenizer style (built once per module)."""
    cache: dict[str, Path] = {}

    def get(style: str) -> Path:
        if style not in cache:
            cache[style] = build(style, tmp_path_factory.mktemp(f"tok-{style}"))
        return cache[style]

    return get


def _tok(styled: Callable[[str], Path], style: str):  # type: ignore[no-untyped-def]
    return models.load(str(styled(style)), weights=False).tokenizer


def _record(**fields: str | int) -> PromptRecord:
    return PromptRecord.model_validate(fields)


def test_llama2_layout_scores_the_word_not_the_bare_metaspace(styled) -> None:
    tok = _tok(styled, "llama2")
    alone = tok.convert_ids_to_tokens(tok(" Paris", add_special_tokens=False)["input_ids"])
    assert alone == ["▁", "▁Paris"]  # the trap: the answer tokenized on its own starts with a bare '▁'
    [p] = tokenization.tokenize(tok, [_record(base="The capital of France is", target=" Paris")], "auto")
    assert p.target_tokens == ("▁Paris",)
    assert p.target_id == tok.convert_tokens_to_ids("▁Paris")


@pytest.mark.parametrize("style", STYLES)
def test_answer_ids_are_the_tokens_that_follow_the_prompt(styled, style: str) -> None:
    tok = _tok(styled, style)
    base = "The Space Needle is located in the city of"
    for answer in (" Seattle", " Paris", " 1889", " Tallahassee", " Zorblaxian"):
        ids = tokenization.answer_ids(tok, base, answer)
        whole = tok(base + answer, add_special_tokens=False)["input_ids"]
        plain = tok(base, add_special_tokens=False)["input_ids"]
        assert list(ids) == whole[len(plain) :]  # base + answer is exactly base's tokens then these
        assert tok.decode(plain + list(ids)) == base + answer
        first = tok.convert_ids_to_tokens(list(ids))[0]
        bare = not first.replace("Ġ", "").replace("▁", "").strip()
        if answer in (" Seattle", " Paris"):  # words seen after a space: one token with its space
            assert not bare and len(ids) == 1
        # a bare space token (GPT-2 gives 'Ġ' + 'Tallahassee' when the word only appeared unspaced) is
        # what the model must produce next, so it is scored, and the run warns about it
        [p] = tokenization.tokenize(tok, [_record(base=base, target=answer)])
        warned = scoring_warnings([p])
        assert any("bare space" in w for w in warned) == bare
        assert any("multi-token" in w for w in warned) == (len(ids) > 1)


@pytest.mark.parametrize("style", STYLES)
def test_bos_follows_the_tokenizer_and_shifts_subject_spans(styled, style: str) -> None:
    tok = _tok(styled, style)
    rec = _record(base="The Space Needle is in downtown Seattle", subject="Space Needle", target=" Seattle")
    auto, on, off = (tokenization.tokenize(tok, [rec], bos)[0] for bos in ("auto", True, False))
    assert auto.bos == (style in BOS_STYLES)
    assert on.base_ids[0] == tok.bos_token_id and on.base_ids[1:] == off.base_ids
    assert off.base_ids == tuple(tok(rec.base, add_special_tokens=False)["input_ids"])
    if style in BOS_STYLES:  # exactly what the tokenizer itself produces by default
        assert auto.base_ids == tuple(tok(rec.base)["input_ids"])
    assert on.subject_span == (off.subject_span[0] + 1, off.subject_span[1] + 1)
    start, end = off.subject_span
    assert tok.decode(list(off.base_ids[start:end])).strip() == "Space Needle"
    assert on.target_ids == off.target_ids  # BOS plays no part in which tokens follow the prompt


@pytest.mark.parametrize("style", STYLES)
def test_subject_matches_whole_words_on_token_boundaries(styled, style: str) -> None:
    tok = _tok(styled, style)
    [p] = tokenization.tokenize(tok, [_record(base=PARIS, subject="Paris", target=" France")], "auto")
    second = PARIS.index(" Paris ") + 1
    assert p.subject_chars == (second, second + 5)
    start, end = p.subject_span
    enc = tok(PARIS, add_special_tokens=False, return_offsets_mapping=True)
    shift = int(p.bos)
    covered = [enc["offset_mapping"][i - shift] for i in range(start, end)]
    assert min(a for a, _ in covered) >= second - 1 and max(b for _, b in covered) == second + 5
    assert tok.decode(list(p.base_ids[start:end])).strip() == "Paris"


def test_ambiguous_subject_is_an_error_unless_the_record_says_which(styled) -> None:
    tok = _tok(styled, "gpt2")
    twice = "Paris is big and Paris is the capital of"
    with pytest.raises(tokenization.TokenizationError, match="subject_occurrence"):
        tokenization.tokenize(tok, [_record(base=twice, subject="Paris", target=" France")])
    [p] = tokenization.tokenize(
        tok, [_record(base=twice, subject="Paris", subject_occurrence=2, target=" X")]
    )
    assert p.subject_chars == (17, 22)


@pytest.mark.parametrize("style", STYLES)
def test_replacement_keeps_leading_space_forms(styled, style: str) -> None:
    tok = _tok(styled, style)
    records = [
        _record(base="In 1889, Paris was the capital of", subject="Paris", target=" France"),
        _record(base="In 1889, Rome was the capital of", subject="Rome", target=" Italy"),
    ]
    prompts = tokenization.tokenize(tok, records, "auto")
    swapped = tokenization.replacements(tok, prompts, seed=0)
    for p, other in ((prompts[0], records[1]), (prompts[1], records[0])):
        ids = swapped[p.index]
        assert len(ids) == p.length
        text = tok.decode(list(ids), skip_special_tokens=True)
        assert text == p.record.base.replace(str(p.record.subject), str(other.subject))


def _summary(result) -> dict:  # type: ignore[no-untyped-def]
    assert result.exit_code == 0, result.output
    run_dir = Path(result.output.strip().splitlines()[-1])
    return {**json.loads((run_dir / "summary.json").read_text()), "_dir": str(run_dir)}


def _config(tmp_path: Path, model: Path, prompts: object, **extra: object) -> Path:
    cfg = {
        "name": "tok",
        "model": {"name": str(model)},
        "prompts": prompts,
        "sweep": {"layer": "all"},
        "interventions": [{"kind": "zero", "component": "block_output", "layer": "$layer", "position": -1}],
        "metrics": ["target_prob", "logit_diff"],
        "output": {"plots": False, "root": str(tmp_path / "runs")},
        **extra,
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.mark.parametrize("style", ["llama2", "gpt2"])
def test_run_records_scored_ids_and_matches_a_hand_forward(styled, style: str, tmp_path: Path) -> None:
    import torch

    rec = {"base": "The Colosseum is located in the city of", "target": " Rome", "foil": " Paris"}
    result = runner.invoke(app, ["run", str(_config(tmp_path, styled(style), [rec])), "--quiet"])
    assert result.exit_code == 0, result.output
    run_dir = Path(result.output.strip().splitlines()[-1])
    [entry] = json.loads((run_dir / "summary.json").read_text())["prompts"]
    lm = models.load(str(styled(style)))
    tok = lm.tokenizer
    plain = tok(rec["base"], add_special_tokens=False)["input_ids"]
    ids = tok(rec["base"])["input_ids"]  # the tokenizer's own default: BOS for Llama, none for GPT-2
    assert entry["bos"] == (style == "llama2") and entry["tokens"] == tok.convert_ids_to_tokens(ids)
    for name in ("target", "foil"):
        expect = tok(rec["base"] + rec[name], add_special_tokens=False)["input_ids"][len(plain) :]
        assert entry[f"{name}_ids"] == expect
    with torch.inference_mode():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    t, f = entry["target_ids"][0], entry["foil_ids"][0]
    assert entry["clean"]["logit_diff"] == pytest.approx(float(logits[t] - logits[f]), abs=1e-4)
    assert entry["clean"]["logit_diff"] != 0.0
    assert entry["clean"]["target_prob"] == pytest.approx(float(torch.softmax(logits, -1)[t]), abs=1e-6)


def test_shared_first_token_is_a_validate_error_for_logit_diff(styled, tmp_path: Path) -> None:
    rec = {"base": "The zoo is in", "target": " San Francisco", "foil": " San Diego"}
    path = _config(tmp_path, styled("llama"), [rec])
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert (
        f"{path}:" in result.output and "prompts[0].foil" in result.output and "same token" in result.output
    )
    assert "Traceback" not in result.output
    path = _config(tmp_path, styled("llama"), [rec], metrics=["target_prob"])
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((Path(result.output.strip().splitlines()[-1]) / "summary.json").read_text())
    assert any("share their first token" in w for w in summary["warnings"])
    assert "warning: " in result.output and "scored, prompt 0: target '▁San'" in result.output


def test_ambiguous_subject_in_a_config_exits_2_with_file_line(styled, tmp_path: Path) -> None:
    rec = {"base": "Paris is big and Paris is the capital of", "subject": "Paris", "target": " France"}
    path = _config(tmp_path, styled("gpt2"), [{"base": "The zoo is in", "target": " Rome"}, rec])
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "subject: Paris" in t)
    assert f"{path}:{line}" in result.output and "prompts[1].subject" in result.output


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_full_answer_scoring_matches_teacher_forcing_by_hand(styled, style: str, tmp_path: Path) -> None:
    import torch

    from ivx.model import components

    rec = {"base": "The Colosseum is located in the city of", "target": " Zorblaxian Rome"}
    path = _config(tmp_path, styled(style), [rec], metrics=["target_prob", "indirect_effect"], answer="full")
    summary = _summary(runner.invoke(app, ["run", str(path), "--quiet"]))
    rows = [json.loads(line) for line in (Path(summary["_dir"]) / "results.jsonl").read_text().splitlines()]
    [entry] = summary["prompts"]
    answer = entry["target_ids"]
    assert len(answer) >= 3 and not any("multi-token" in w for w in summary.get("warnings", []))
    lm = models.load(str(styled(style)))
    base = (
        tuple(lm.tokenizer(rec["base"])["input_ids"])
        if entry["bos"]
        else tuple(lm.tokenizer(rec["base"], add_special_tokens=False)["input_ids"])
    )
    ids = torch.tensor([base + tuple(answer[:-1])])

    def p_answer(layer: int | None) -> float:
        def zero_last_prompt_position(module, args, out):  # type: ignore[no-untyped-def]
            (out[0] if isinstance(out, tuple) else out)[:, len(base) - 1] = 0.0

        handle = None
        if layer is not None:
            handle = components.blocks(lm.model)[layer].register_forward_hook(zero_last_prompt_position)
        try:
            with torch.inference_mode():
                logp = torch.log_softmax(lm.model(input_ids=ids).logits[0].double(), -1)
        finally:
            if handle is not None:
                handle.remove()
        return float(sum(logp[len(base) - 1 + j, t] for j, t in enumerate(answer)).exp())

    # products of several probabilities of a random model are tiny: compare relatively, no abs floor
    assert entry["clean"]["target_prob"] == pytest.approx(p_answer(None), rel=1e-4, abs=0)
    for row in rows:
        assert row["target_prob"] == pytest.approx(p_answer(row["layer"]), rel=1e-4, abs=0)
        expect = row["target_prob"] - row["p_corrupted"]
        assert row["indirect_effect"] == pytest.approx(expect, rel=1e-9, abs=0)
    assert len(rows) == 2 and rows[0]["target_prob"] != pytest.approx(
        entry["clean"]["target_prob"], rel=1e-2, abs=0
    )


@pytest.mark.parametrize("style", ["llama2", "pythia"])
def test_trace_labels_the_bos_position_as_its_own_category(styled, style: str, tmp_path: Path) -> None:
    rec = {
        "base": "The Space Needle is located in the city of",
        "subject": "Space Needle",
        "target": " Seattle",
    }
    path = _config(
        tmp_path,
        styled(style),
        [rec],
        corrupt={"kind": "noise", "samples": 2},
        sweep={"layer": "all", "position": "all"},
        interventions=[
            {"kind": "vanilla", "component": "block_output", "layer": "$layer", "position": "$position"}
        ],
        metrics=["indirect_effect"],
    )
    summary = _summary(runner.invoke(app, ["run", str(path), "--quiet"]))
    [entry] = summary["prompts"]
    comp = summary["trace"]["components"]["block_output"]
    labels = comp["by_position"]["labels"]
    if style == "llama2":
        assert entry["bos"] and labels[0] == "BOS" and "bos" in comp["by_category"]
        assert entry["subject_span"][0] == 2  # <s> ▁The ▁Space …
        # restoring the BOS state cannot matter: noise is on the subject, BOS comes first (causal)
        assert comp["by_category"]["bos"]["mean"] == pytest.approx([0.0, 0.0], abs=1e-7)
    else:
        assert not entry["bos"] and "bos" not in comp["by_category"] and labels[0] == "The"
        assert entry["subject_span"][0] == 1
