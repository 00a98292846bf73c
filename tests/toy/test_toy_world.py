"""The toy world is deterministic, its splits are disjoint, and its records are valid prompts."""

from __future__ import annotations

from ivx.toy import world as toy_world
from ivx.toy.tokenizer import build as build_tokenizer


def test_deterministic_for_a_seed() -> None:
    a, b, c = toy_world.build(0), toy_world.build(0), toy_world.build(1)
    assert a == b
    assert a.subjects != c.subjects
    assert toy_world.ioi_prompts(a, "train", 20, 3) == toy_world.ioi_prompts(b, "train", 20, 3)


def test_heldout_templates_and_pairs_never_trained_on() -> None:
    w = toy_world.build(0)
    train = {r["base"] for r in toy_world.fact_prompts(w, "train")}
    held = toy_world.fact_prompts(w, "heldout")
    assert held and not train & {r["base"] for r in held}
    assert not set(w.train_pairs) & set(w.heldout_pairs)
    for record in toy_world.ioi_prompts(w, "heldout", 200):
        pair = (record["target"].strip(), record["foil"].strip())
        assert pair in w.heldout_pairs or pair[::-1] in w.heldout_pairs


def test_subject_words_are_distinctive() -> None:
    w = toy_world.build(0)
    words = [word for s in w.subjects for word in s.name.split()]
    assert len(words) == len(set(words))  # every name word belongs to one subject


def test_records_are_valid_prompts() -> None:
    w = toy_world.build(0)
    tok = build_tokenizer(toy_world.vocabulary(w))
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    for record in toy_world.ioi_patching_records(w, 50):
        assert len(ids(record["base"])) == len(ids(record["source"]))
        assert record["target"] != record["foil"]
        assert record["source"].endswith(record["base"].split()[-1])
    for record in toy_world.city_swap_records(w, 50):
        assert record["subject"] in record["base"]
        assert len(ids(record["base"])) == len(ids(record["source"]))
    for record in toy_world.fact_prompts(w, "heldout")[:100]:
        assert record["subject"] in record["base"]
        assert len(ids(record["target"])) == 1 and tok.unk_token_id not in ids(record["base"])
