"""Bundles round-trip through the real huggingface_hub client and a Hub-compatible server on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ivx.cli.app import app
from ivx.store import bundle, hub
from tests.fakehub import FakeHub

runner = CliRunner()


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", "secret-token")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        import huggingface_hub.constants as c

        monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(c, "ENDPOINT", server.url)
        template = server.url + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", template, raising=False)
        monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setattr(c, "HF_HUB_DISABLE_XET", True, raising=False)
        yield server


def make_bundle(path: Path) -> Path:
    iv = {
        "kind": "addition",
        "name": "steer",
        "component": "block_output",
        "layer": 2,
        "position": "last",
        "vector": "hf://user/steer",
    }
    vec = torch.linspace(-1, 1, 128)
    return bundle.save(path, [iv], {"steer.vector": vec}, {"name": "ivx-toy", "d_model": 128, "n_layers": 4})


def test_push_pull_round_trip_and_hf_load(fake_hub, tmp_path: Path) -> None:
    src = make_bundle(tmp_path / "b")
    result = runner.invoke(app, ["push", str(src), "--repo", "user/steer", "--message", "first"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("/user/steer")
    assert "secret-token" not in result.output
    result = runner.invoke(app, ["pull", "user/steer", "--out", str(tmp_path / "pulled")])
    assert result.exit_code == 0, result.output
    pulled = tmp_path / "pulled"
    for name in ("ivx_bundle.json", "weights.safetensors", "README.md"):
        assert (pulled / name).read_bytes() == (src / name).read_bytes()
    loaded = bundle.load("hf://user/steer", expect={"d_model": 128, "n_layers": 4})
    assert torch.equal(
        loaded.tensors["steer.vector"], load_file(str(src / "weights.safetensors"))["steer.vector"]
    )
    assert "library_name: ivx" in (pulled / "README.md").read_text()
    # a branch
    result = runner.invoke(app, ["push", str(src), "--repo", "user/steer", "--revision", "v2"])
    assert result.exit_code == 0 and result.output.strip().endswith("/tree/v2"), result.output
    assert bundle.load("hf://user/steer@v2").tensors.keys() == {"steer.vector"}


def test_refuses_incomplete_runs_and_dry_run_uses_no_network(fake_hub, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"status": "running"}))
    result = runner.invoke(app, ["push", str(run), "--repo", "user/run"])
    assert result.exit_code == 1 and "status 'running'" in result.output
    (run / "manifest.json").write_text(json.dumps({"status": "complete"}))
    (run / "results.jsonl").write_text("{}\n" * 10)
    (run / "partial.tmp").write_text("x")
    before = list(fake_hub.store.requests)
    result = runner.invoke(app, ["push", str(run), "--repo", "user/run", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "30  results.jsonl" in result.output and "partial.tmp" not in result.output
    assert "2 files" in result.output
    assert fake_hub.store.requests == before  # nothing was sent


def test_bad_token_and_unreachable_hub_are_one_line_errors(
    fake_hub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    src = make_bundle(tmp_path / "b")
    monkeypatch.setenv("HF_TOKEN", "bad")
    result = runner.invoke(app, ["push", str(src), "--repo", "user/steer"])
    assert result.exit_code == 1
    assert "token was rejected (401)" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    monkeypatch.setenv("HF_TOKEN", "secret-token")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(hub.HubError, match="cannot reach the Hub"):
        hub.push(src, "user/steer")


def test_run_save_push_pull_reuse_gives_identical_generations(fake_hub, tmp_path: Path) -> None:
    """ivx generate (steering) → ivx save → ivx push → hf:// vector in a new run: same tokens."""
    import yaml

    from ivx.recipes.generate import generate_run

    root = Path(__file__).resolve().parents[2]
    first = generate_run(
        root / "configs" / "steering.yaml", ("generate.max_new_tokens=2",), str(tmp_path / "runs")
    )
    result = runner.invoke(app, ["save", str(first), "--out", str(tmp_path / "bundle")])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["push", str(tmp_path / "bundle"), "--repo", "user/steer-city"]).exit_code == 0
    from ivx.config.loader import parse

    cfg = parse((root / "configs" / "steering.yaml").read_text())
    iv = cfg["interventions"][0]
    del iv["contrast"]
    iv["vector"] = "hf://user/steer-city"
    cfg["prompts"] = [{"base": p["base"]} for p in cfg["prompts"]]
    path = tmp_path / "reuse.yaml"
    path.write_text(yaml.safe_dump(cfg))
    second = generate_run(path, ("generate.max_new_tokens=2",), str(tmp_path / "runs"))
    rows = lambda d: [json.loads(x) for x in (d / "generations.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["intervened"]["token_ids"] for r in rows(first)] == [
        r["intervened"]["token_ids"] for r in rows(second)
    ]
    assert [r["intervened"]["probs"] for r in rows(first)] == [r["intervened"]["probs"] for r in rows(second)]
    _check_steering_by_hand(root, rows(first))


def _check_steering_by_hand(root: Path, rows: list[dict]) -> None:
    """The pulled vector is ActAdd's mean difference of last-token block outputs, and its effect on
    each prompt's first new token is a hand-written hook's: + 3 × vector at layer 2, last token."""
    from ivx.model import loading as models

    lm = models.load("ivx-toy")
    block = lm.model.transformer.h[2]
    ids = lambda text: torch.tensor([lm.tokenizer(text, add_special_tokens=False)["input_ids"]])  # noqa: E731

    def last_state(text: str) -> torch.Tensor:
        seen = {}
        handle = block.register_forward_hook(
            lambda m, a, o: seen.__setitem__("h", o[0] if isinstance(o, tuple) else o)
        )
        try:
            with torch.no_grad():
                lm.model(ids(text))
        finally:
            handle.remove()
        return seen["h"][0, -1]

    pairs = [
        json.loads(x)
        for x in (root / "configs" / "data" / "steer_city.jsonl").read_text().splitlines()
        if x.strip()
    ]
    vector = torch.stack([last_state(p["positive"]) - last_state(p["negative"]) for p in pairs]).mean(0)
    pulled = bundle.load("hf://user/steer-city").tensors
    assert len(pulled) == 1
    torch.testing.assert_close(next(iter(pulled.values())), vector, atol=1e-5, rtol=1e-5)

    def steer(m, a, o):  # noqa: ANN001, ANN202
        h = (o[0] if isinstance(o, tuple) else o).clone()
        h[0, -1] += 3.0 * vector
        return (h, *o[1:]) if isinstance(o, tuple) else h

    moved = 0
    for row in rows:
        with torch.no_grad():
            plain = torch.softmax(lm.model(ids(row["prompt"])).logits[0, -1], -1)
            handle = block.register_forward_hook(steer)
            try:
                steered = torch.softmax(lm.model(ids(row["prompt"])).logits[0, -1], -1)
            finally:
                handle.remove()
        for probs, out in ((plain, row["unintervened"]), (steered, row["intervened"])):
            assert out["token_ids"][0] == int(probs.argmax())
            assert out["probs"][0] == pytest.approx(float(probs.max()), abs=2e-6)
        moved += row["intervened"]["token_ids"][0] != row["unintervened"]["token_ids"][0]
    assert moved > 0  # the steering does something
