"""What a researcher sees after a run: head tables and heatmaps, the Python API, ls/show/compare,
CLI polish (version, help, piped tables, repo ids, Ctrl-C)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import ivx
from ivx.cli.app import app
from ivx.model import loading as models

ROOT = Path(__file__).resolve().parents[2]
HEADS = ROOT / "configs" / "activation_patching_heads.yaml"
runner = CliRunner()


@pytest.fixture(scope="module")
def head_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("heads")
    result = runner.invoke(app, ["run", str(HEADS), "--out", str(out), "--set", "prompts.limit=4"])
    assert result.exit_code == 0, result.output
    return Path(result.output.strip().splitlines()[-1]), result.output


def manual_head_patch(layer: int, head: int, limit: int) -> float:
    """Mean logit_diff_norm of patching one head's c_proj input slice (all positions) by hand."""
    from ivx.config import loader as config
    from ivx.model import loading as models
    from ivx.plan import positions

    cfg = config.load(HEADS, ["prompts.limit=" + str(limit)])
    lm = models.load("ivx-toy")
    proj = lm.model.transformer.h[layer].attn.c_proj
    d_head = lm.info.head_dim
    values = []
    for p in positions.tokenize(lm.tokenizer, cfg.records):

        def ld(ids: tuple[int, ...], hook=None) -> float:
            handle = proj.register_forward_pre_hook(hook) if hook else None
            try:
                with torch.no_grad():
                    logits = lm.model(input_ids=torch.tensor([ids])).logits[0, -1]
            finally:
                if handle:
                    handle.remove()
            return float(logits[p.target_id] - logits[p.foil_id])

        saved = {}

        def grab(module, args):  # noqa: ANN001, ANN202
            saved["x"] = args[0].detach().clone()

        def put(module, args):  # noqa: ANN001, ANN202
            x = args[0].clone()
            x[..., head * d_head : (head + 1) * d_head] = saved["x"][..., head * d_head : (head + 1) * d_head]
            return (x,)

        clean = ld(p.source_ids, grab)
        corrupted = ld(p.base_ids)
        patched = ld(p.base_ids, put)
        values.append((patched - corrupted) / (clean - corrupted))
    return sum(values) / len(values)


def test_head_sweep_prints_head_table_and_draws_the_head_heatmap(head_run: tuple[Path, str]) -> None:
    run_dir, output = head_run
    assert "logit_diff_norm by layer × head" in output
    run = ivx.load_run(run_dir)
    df = run.results
    assert len(df) == 4 * 4 * 4  # layers × heads × prompts
    means = df.groupby(["layer", "head"])["logit_diff_norm"].mean()  # independent of summary.json
    fig = run.plot("logit_diff_norm")
    ax = fig.axes[0]
    data = ax.images[0].get_array()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "3"]
    assert ax.get_xlabel() == "head" and ax.get_ylabel() == "layer"
    for (layer, head), value in means.items():
        assert data[layer, head] == pytest.approx(value, abs=1e-9)
    assert (run_dir / "plots" / "sweep_logit_diff_norm.png").is_file()
    table_row = next(line for line in output.splitlines() if line.startswith("0 "))
    assert [float(v) for v in table_row.split()[1:]] == pytest.approx(
        [means[(0, h)] for h in range(4)], abs=6e-4
    )
    assert data[0, 2] == pytest.approx(manual_head_patch(0, 2, 4), abs=1e-4)


def test_python_api_runs_a_dict_and_loads_tensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    monkeypatch.chdir(ROOT / "configs")  # relative files in a dict resolve against the cwd
    config = yaml.safe_load((ROOT / "configs" / "activation_patching.yaml").read_text())
    config["output"] = {"logits": "last", "plots": False}
    run = ivx.run(config, out=tmp_path, prompts={"limit": 2}, sweep={"component": ["block_output"]})
    assert run.manifest["status"] == "complete"
    assert len(run.results) == 2 * 4 * len(run.summary["prompts"][0]["tokens"])
    assert set(run.results["component"]) == {"block_output"}
    assert "clean.prompt0" in run.tensors and len(run.tensors) > 2
    cell = int(run.results["cell"].iloc[0])
    logits = run.tensors[f"cell{cell}"]
    assert logits.shape[-1] == 832
    again = ivx.load_run(run.path)
    assert again.summary == run.summary
    # the numbers, from plain forwards of the two prompts: the source run, the base run, and two
    # identities — patching position 0 (the same token in both prompts) changes nothing; patching the
    # last block's output at the last position gives the source run's answer
    lm = models.load("ivx-toy")
    records = [
        json.loads(line) for line in (ROOT / "configs" / "data" / "ioi.jsonl").read_text().splitlines()
    ]
    n_layers, rows = lm.info.n_layers, run.results
    for i, record in enumerate(records[:2]):
        base, source = (
            lm.tokenizer(record[k], add_special_tokens=False)["input_ids"] for k in ("base", "source")
        )
        assert base[0] == source[0] and len(base) == len(source)
        with torch.no_grad():
            base_logits, source_logits = (
                lm.model(torch.tensor([ids])).logits[0, -1] for ids in (base, source)
            )
        torch.testing.assert_close(run.tensors[f"source.prompt{i}"], source_logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(run.tensors[f"corrupted.prompt{i}"][0], base_logits, atol=1e-4, rtol=1e-4)
        mine = rows[rows["prompt_index"] == i]
        first = int(mine[(mine["layer"] == 0) & (mine["position"] == 0)]["cell"].iloc[0])
        last = int(
            mine[(mine["layer"] == n_layers - 1) & (mine["position"] == len(base) - 1)]["cell"].iloc[0]
        )
        torch.testing.assert_close(run.tensors[f"cell{first}"], base_logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(run.tensors[f"cell{last}"], source_logits, atol=1e-4, rtol=1e-4)
        target, foil = (
            lm.tokenizer(record[k], add_special_tokens=False)["input_ids"][0] for k in ("target", "foil")
        )
        row = mine[mine["cell"] == last].iloc[0]
        assert row["logit_diff"] == pytest.approx(
            float(source_logits[target] - source_logits[foil]), abs=1e-4
        )
        assert row["logit_diff_norm"] == pytest.approx(1.0, abs=1e-4)


def test_ls_show_compare(head_run: tuple[Path, str], tmp_path: Path, monkeypatch) -> None:
    import shutil

    monkeypatch.setenv("COLUMNS", "200")  # one block per table: the columns are read by position

    run_dir, output = head_run
    listed = runner.invoke(app, ["ls", str(run_dir.parent)])
    assert listed.exit_code == 0 and run_dir.name in listed.output and "complete" in listed.output
    line = next(x for x in listed.output.splitlines() if x.startswith(run_dir.name))
    assert line.split()[4] == str(4 * 4 * 4)  # cells: layers × heads × prompts
    shown = runner.invoke(app, ["show", str(run_dir)])
    assert shown.exit_code == 0 and "logit_diff_norm by layer × head" in shown.output
    compared = runner.invoke(app, ["compare", str(run_dir), str(run_dir)])
    assert compared.exit_code == 0
    deltas = [line.split()[4] for line in compared.output.splitlines()[1:] if line.strip()]
    assert len(deltas) == 16 and set(deltas) == {"+0.000"}
    # B: a copy whose grid means are shifted by known amounts; A's column is recomputed from
    # results.jsonl (mean over prompts), not read back from summary.json
    other = tmp_path / "shifted"
    shutil.copytree(run_dir, other)
    summary = json.loads((other / "summary.json").read_text())
    for entry in summary["grid"]:
        entry["logit_diff_norm"] += 0.25 * entry["head"] - 0.5
    (other / "summary.json").write_text(json.dumps(summary))
    rows = [json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()]
    compared = runner.invoke(app, ["compare", str(run_dir), str(other)])
    assert compared.exit_code == 0, compared.output
    lines = [x.split() for x in compared.output.splitlines()[1:] if x.strip()]
    assert len(lines) == 16
    for layer, head, a, b, delta, ld_a, ld_b, ld_delta in lines:  # logit_diff_norm, then logit_diff
        mine = [r for r in rows if (r["layer"], r["head"]) == (int(layer), int(head))]
        mean = sum(r["logit_diff_norm"] for r in mine) / len(mine)
        assert len(mine) == 4 and float(a) == pytest.approx(mean, abs=6e-4)
        assert float(delta) == pytest.approx(0.25 * int(head) - 0.5, abs=1e-3)
        assert float(b) == pytest.approx(mean + 0.25 * int(head) - 0.5, abs=1e-3)
        assert ld_a == ld_b and ld_delta == "+0.000"  # an unshifted metric
        assert float(ld_a) == pytest.approx(sum(r["logit_diff"] for r in mine) / 4, abs=6e-4)
    missing = runner.invoke(app, ["show", str(run_dir.parent / "nope")])
    assert missing.exit_code == 2 and "not an ivx run directory" in missing.output


def test_version_help_and_piped_components() -> None:
    assert runner.invoke(app, ["--version"]).output.strip() == f"ivx {ivx.__version__}"
    helped = runner.invoke(app, ["--help"])
    assert helped.exit_code == 0 and "<bool>" not in helped.output
    assert "<bool>" not in runner.invoke(app, ["run", "--help"]).output
    listed = runner.invoke(app, ["components", "ivx-toy"])  # CliRunner output is not a terminal
    assert "head_attention_value_output" in listed.output and "…" not in listed.output


def test_push_and_pull_validate_repo_ids_alike() -> None:
    bundle = ROOT / "configs" / "bundles" / "das_city"
    for args in (["push", str(bundle), "--repo", "badname", "--dry-run"], ["pull", "not-a-repo"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "is not a Hub repository id" in result.output
    ok = runner.invoke(app, ["push", str(bundle), "--repo", "user/name", "--dry-run"])
    assert ok.exit_code == 0
    files = sorted(f for f in bundle.iterdir() if f.is_file())
    listed = {line.split()[1]: int(line.split()[0].replace(",", "")) for line in ok.output.splitlines()[:-1]}
    assert listed == {f.name: f.stat().st_size for f in files}  # each file with its size on disk
    total = sum(f.stat().st_size for f in files)
    assert ok.output.splitlines()[-1].startswith(
        f"{len(files)} files, {total:,} bytes would be uploaded to user/name"
    )


def test_ctrl_c_names_the_run_directory_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ivx.engine import executor as runner_mod

    def interrupted(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise KeyboardInterrupt
        yield  # a generator, like the real execute

    monkeypatch.setattr(runner_mod.Executor, "execute", interrupted)
    result = runner.invoke(app, ["run", str(HEADS), "--out", str(tmp_path), "-q", "--set", "prompts.limit=2"])
    assert result.exit_code == 130
    run_dir = next(tmp_path.iterdir())
    assert result.output.strip().splitlines()[-1] == f"resume: ivx run --resume {run_dir}"
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "failed"
