"""Regenerate the malformed/malicious config corpus: `python tests/data/bad_configs/make_corpus.py`.

Each `NN_name.yaml` starts with `# expect: <text>`: `ivx validate` must exit 2 with one clear
line containing that text (tests/config/test_bad_configs.py). Binary inputs and the
tampered bundles under `files/` are written here too, so the corpus is reproducible.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

HERE = Path(__file__).parent
FACT = "According to the map , Zormoxis is located in the city of"
PROMPT = f'  - {{base: "{FACT}", subject: Zormoxis, target: " Quajunar"}}\n'


def valid(
    model: str = "{name: ivx-toy}",
    prompts: str = "prompts:\n" + PROMPT,
    corrupt: str = "{kind: noise, samples: 2}",
    sweep: str = "{layer: all}",
    iv: str = "{kind: vanilla, component: block_output, layer: $layer, position: last}",
    extra: str = "",
) -> str:
    """A small valid experiment with one part replaced."""
    return (
        f"name: bad\nmodel: {model}\n{prompts}corrupt: {corrupt}\nsweep: {sweep}\n"
        f"interventions:\n  - {iv}\nmetrics: [indirect_effect]\n{extra}"
    )


SET_IV = "{{kind: set, component: block_output, layer: 0, position: last, vector: {ref}}}"
BUNDLE_IV = "{{kind: addition, component: block_output, layer: 0, position: last, vector: {ref}}}"

CASES: dict[str, tuple[str, str]] = {
    "trust_remote_code_yes": ("trust_remote_code", valid(model="{name: ivx-toy, trust_remote_code: yes}")),
    "trust_remote_code_quoted": (
        "trust_remote_code",
        valid(model="{name: ivx-toy, trust_remote_code: 'true'}"),
    ),
    "trust_remote_code_one": ("trust_remote_code", valid(model="{name: ivx-toy, trust_remote_code: 1}")),
    "empty_base": ("base is empty", valid(prompts='prompts:\n  - {base: "", target: " Quajunar"}\n')),
    "blank_base": ("base is empty", valid(prompts='prompts:\n  - {base: "   ", target: " Quajunar"}\n')),
    "prompt_too_long": (
        "max_position_embeddings",
        valid(
            prompts='prompts:\n  - {base: "'
            + " ".join([FACT] * 8)
            + '", subject: Zormoxis, subject_occurrence: 1, target: " Quajunar"}\n'
        ),
    ),
    "batch_size_zero": ("batch.size", valid(extra="batch: {size: 0}\n")),
    "batch_size_negative": ("batch.size", valid(extra="batch: {size: -3}\n")),
    "seed_two_to_64": ("seed", valid(extra="seed: 18446744073709551616\n")),
    "seed_negative": ("seed", valid(extra="seed: -1\n")),
    "seed_float": ("seed", valid(extra="seed: 1.5\n")),
    "samples_huge_integer": ("corrupt.samples", valid(corrupt="{kind: noise, samples: " + "9" * 60 + "}")),
    "layer_huge_integer": (
        "layer",
        valid(
            sweep="{}", iv="{kind: vanilla, component: block_output, layer: " + "9" * 40 + ", position: last}"
        ),
    ),
    "sigma_zero": ("sigma", valid(corrupt="{kind: noise, samples: 2, sigma: 0}")),
    "sigma_negative": ("sigma", valid(corrupt="{kind: noise, samples: 2, sigma: -1.5}")),
    "sigma_nan": ("sigma", valid(corrupt="{kind: noise, samples: 2, sigma: .nan}")),
    "sigma_word": ("sigma", valid(corrupt="{kind: noise, samples: 2, sigma: big}")),
    "scale_infinite": ("corrupt.scale", valid(corrupt="{kind: noise, samples: 2, scale: .inf}")),
    "coefficient_nan": (
        "coefficient",
        valid(sweep="{}", iv="{kind: addition, component: block_output, layer: 0, coefficient: .nan}"),
    ),
    "not_a_mapping": ("YAML mapping", "- just\n- a list\n"),
    "empty_file": ("YAML mapping", ""),
    "scalar_document": ("YAML mapping", "ivx\n"),
    "invalid_yaml": ("invalid YAML", "model: {name: ivx-toy\nprompts: [\n"),
    "duplicate_key": ("duplicate key", valid(extra="name: again\n")),
    "unknown_key": ("unknown key 'modle'", valid(extra="modle: gpt2\n")),
    "prompts_empty": ("prompts is empty", valid(prompts="prompts: []\n")),
    "prompts_scalar": ("prompts must be", valid(prompts="prompts: 3\n")),
    "prompts_file_missing": ("not found", valid(prompts="prompts: {file: files/nope.jsonl}\n")),
    "prompts_file_bad_json": ("invalid JSON", valid(prompts="prompts: {file: files/bad.jsonl}\n")),
    "prompts_file_binary": ("UTF-8", valid(prompts="prompts: {file: files/binary.jsonl}\n")),
    "prompts_file_deep_json": ("nested too deeply", valid(prompts="prompts: {file: files/deep.jsonl}\n")),
    "unknown_component": (
        "unknown component",
        valid(iv="{kind: vanilla, component: mlp_outptu, layer: $layer}"),
    ),
    "unknown_metric": ("unknown metric", valid(extra="").replace("[indirect_effect]", "[indirect_efect]")),
    "layer_out_of_range": (
        "out of range",
        valid(sweep="{}", iv="{kind: vanilla, component: block_output, layer: 99, position: last}"),
    ),
    "position_out_of_range": (
        "position",
        valid(sweep="{}", iv="{kind: vanilla, component: block_output, layer: 0, position: 500}"),
    ),
    "unknown_sweep_axis": (
        "unknown sweep axis",
        valid(sweep="{}", iv="{kind: vanilla, component: block_output, layer: $layr}"),
    ),
    "unused_sweep_axis": ("not used", valid(sweep="{layer: all, head: [0]}")),
    "cuda_unavailable": ("CUDA", valid(model="{name: ivx-toy, device: cuda}")),
    "model_dir_missing": ("does not exist", valid(model="{name: ./no/such/model}")),
    "subject_not_in_base": (
        "does not occur",
        valid(prompts='prompts:\n  - {base: "x y z", subject: Q, target: " a"}\n'),
    ),
    "dtype_unknown": ("dtype", valid(model="{name: ivx-toy, dtype: float8}")),
    "window_zero": ("window", valid(iv="{kind: vanilla, component: mlp_output, layer: $layer, window: 0}")),
    "top_k_huge": ("output.top_k", valid(extra="output: {top_k: 100000}\n")),
    "plan_too_large": (
        "--max-cells",
        valid(
            sweep="{layer: [" + ", ".join(["0"] * 1500) + "], position: [" + ", ".join(["-1"] * 1500) + "]}",
            iv="{kind: vanilla, component: block_output, layer: $layer, position: $position}",
        ),
    ),
    "pickle_vector": ("cannot be loaded safely", valid(sweep="{}", iv=SET_IV.format(ref="files/evil.pt"))),
    "garbage_safetensors_vector": (
        "not a readable safetensors",
        valid(sweep="{}", iv=SET_IV.format(ref="files/garbage.safetensors")),
    ),
    "vector_missing": ("not found", valid(sweep="{}", iv=SET_IV.format(ref="files/nope.safetensors"))),
    "hub_ref_traversal": (
        "is not a Hub repository id",
        valid(sweep="{}", iv=SET_IV.format(ref="hf://../etc")),
    ),
    "bundle_files_empty": (
        "does not list weights.safetensors",
        valid(sweep="{}", iv=BUNDLE_IV.format(ref="files/bundle_files_empty")),
    ),
    "bundle_weights_tampered": (
        "hash mismatch",
        valid(sweep="{}", iv=BUNDLE_IV.format(ref="files/bundle_tampered")),
    ),
    "bundle_path_traversal": (
        "outside the bundle",
        valid(sweep="{}", iv=BUNDLE_IV.format(ref="files/bundle_traversal")),
    ),
    "bundle_manifest_garbage": (
        "invalid JSON",
        valid(sweep="{}", iv=BUNDLE_IV.format(ref="files/bundle_garbage")),
    ),
    "bundle_without_manifest": (
        "not an ivx bundle",
        valid(
            sweep="{}",
            iv="{kind: rotated_space, component: block_output, layer: 0, interchange_dim: 2, bundle: files}",
        ),
    ),
    "zero_with_coefficient": (
        "`coefficient` is not used by kind 'zero'",
        valid(sweep="{}", iv="{kind: zero, component: block_output, layer: 0, coefficient: 2.0}"),
    ),
    "noise_with_interchange_dim": (
        "`interchange_dim` is not used by kind 'noise'",
        valid(iv="{kind: noise, component: block_output, layer: $layer, interchange_dim: 4}"),
    ),
    "scale_without_value": (
        "kind 'scale' needs `value`",
        valid(sweep="{}", iv="{kind: scale, component: block_output, layer: 0}"),
    ),
    "sweep_position_typo": (
        "sweep.position[1]",
        valid(
            sweep="{layer: all, position: [1, lats]}",
            iv="{kind: vanilla, component: block_output, layer: $layer, position: $position}",
        ),
    ),
    "sweep_kind_typo": (
        "sweep.kind[1]",
        valid(
            sweep="{layer: all, kind: [vanilla, zreo]}",
            iv="{kind: $kind, component: block_output, layer: $layer, position: last}",
        ),
    ),
    "position_out_of_range_in_5_prompts": (
        "5 prompts (0, 1, 2, 3, 4)",
        valid(
            prompts="prompts:\n" + PROMPT * 5,
            sweep="{}",
            iv="{kind: vanilla, component: block_output, layer: 0, position: 500}",
        ),
    ),
    "trainable_without_bundle": (
        "needs a trained `bundle`",
        valid(sweep="{}", iv="{kind: rotated_space, component: block_output, layer: 0, interchange_dim: 2}"),
    ),
    "sigma_subjects_without_subject": (
        "no record has a `subject`",
        valid(
            prompts='prompts:\n  - {base: "' + FACT + '", target: " Quajunar"}\n',
            corrupt="{kind: noise, samples: 2, positions: [1, 2]}",
            iv="{kind: vanilla, component: block_output, layer: $layer, position: last}",
        ),
    ),
    "bundle_for_another_model": (
        "was made for ivx-toy (n_layers 12)",
        valid(
            sweep="{}",
            iv="{kind: rotated_space, component: block_output, layer: 0, bundle: files/bundle_other_model}",
        ),
    ),
    "vector_wrong_width": (
        "has 7 dims but block_output has 128",
        valid(sweep="{}", iv=SET_IV.format(ref="files/narrow.safetensors")),
    ),
    "corrupt_empty_list": ("corrupt is an empty list", valid(corrupt="[]")),
    "shuffled_labels_under_run": (
        "controls: shuffled_labels applies to `ivx train` only",
        valid(extra="controls: [shuffled_labels]\n"),
    ),
    "generate_section_under_run": (
        "`generate:` holds the settings of `ivx generate`",
        valid(extra="generate: {max_new_tokens: 5}\n"),
    ),
    "attribution_settings_with_exact": (
        "this run uses method: exact",
        valid(extra="attribution: {grad_drop: true}\n"),
    ),
}


class _Evil:
    """Unpickling this would call print: weights_only loading must refuse it."""

    def __reduce__(self) -> tuple:
        return (print, ("this pickle ran code",))


def _bundle(name: str, mutate) -> None:  # type: ignore[no-untyped-def]
    import torch
    from safetensors.torch import save_file

    out = HERE / "files" / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    save_file({"vector": torch.ones(128)}, str(out / "weights.safetensors"))
    data = (out / "weights.safetensors").read_bytes()
    manifest = {
        "format_version": 1,
        "ivx_version": "0.1.0",
        "interventions": [{"kind": "addition", "name": "vector", "component": "block_output", "layer": 0}],
        "base_model": {"name": "ivx-toy", "revision": None, "d_model": 128, "n_layers": 4},
        "files": {"weights.safetensors": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}},
        "created": "2026-01-01T00:00:00+00:00",
    }
    mutate(out, manifest)
    if not (out / "ivx_bundle.json").exists():
        (out / "ivx_bundle.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _narrow(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"vector": torch.ones(7)}, str(path))


def _tamper(out: Path, manifest: dict) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"vector": torch.full((128,), 100.0)}, str(out / "weights.safetensors"))


def _traverse(out: Path, manifest: dict) -> None:
    manifest["files"]["../../../../etc/passwd"] = {"sha256": "0" * 64, "bytes": 1}


def _garbage(out: Path, manifest: dict) -> None:
    (out / "ivx_bundle.json").write_text("{not json")


def make() -> None:
    """Write every case and its auxiliary files."""
    files = HERE / "files"
    files.mkdir(exist_ok=True)
    (files / "bad.jsonl").write_text('{"base": "a b c", "target": " d"}\n{"base": oops}\n')
    (files / "binary.jsonl").write_bytes(bytes(range(256)) * 4)
    (files / "deep.jsonl").write_text("[" * 100_000 + "\n")
    (files / "evil.pt").write_bytes(pickle.dumps(_Evil()))
    (files / "garbage.safetensors").write_bytes(b"\xff" * 64)
    _narrow(files / "narrow.safetensors")
    _bundle("bundle_files_empty", lambda out, m: m.update(files={}))
    _bundle("bundle_tampered", _tamper)
    _bundle("bundle_traversal", _traverse)
    _bundle("bundle_garbage", _garbage)
    _bundle("bundle_other_model", lambda out, m: m["base_model"].update(n_layers=12))
    for old in HERE.glob("*.yaml"):
        old.unlink()
    for i, (name, (expect, text)) in enumerate(CASES.items(), start=1):
        (HERE / f"{i:02d}_{name}.yaml").write_text(f"# expect: {expect}\n{text}")
    n = len(CASES)
    (HERE / f"{n + 1:02d}_binary_file.yaml").write_bytes(b"# expect: UTF-8\n" + bytes(range(128, 256)) * 8)
    (HERE / f"{n + 2:02d}_nul_bytes.yaml").write_bytes(b"# expect: binary data\nname: a\x00b\n")
    (HERE / f"{n + 3:02d}_deep_yaml.yaml").write_text(
        "# expect: nested too deeply\nx: " + "[" * 100_000 + "\n"
    )
    laughs = "# expect: aliases\na: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 9):
        laughs += f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 10) + "]\n"
    (HERE / f"{n + 4:02d}_billion_laughs.yaml").write_text(laughs)


if __name__ == "__main__":
    make()
