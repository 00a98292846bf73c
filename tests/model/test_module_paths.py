"""Module-path components against hand-written hooks on three architectures (gpt2, llama, gpt_neox).

Each cell's last-position logits must equal a plain forward with one hand-written torch hook on the
same module doing the same edit at the same position — with ivx's exact shortcuts on (the last
layer's cells cross the trimmed final block) and off. Bad paths are config problems at file:line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import ivx
from ivx.config.module_names import from_value
from ivx.core.errors import ConfigError
from ivx.model import module_paths

BASE = "When Mary and John went to the store , John gave a drink to"
SOURCE = "When Tom and James went to the park , James gave a ball to"
POSITIONS = (2, 12)  # an early position and the last one
PATHS = {  # inside the MLP: the activation's output, the down projection's input
    "gpt2": ("transformer.h.{layer}.mlp.act", "output"),
    "llama": ("model.layers.{layer}.mlp.down_proj", "input"),
    "gpt_neox": ("gpt_neox.layers.{layer}.mlp.act", "output"),
}
OFF = {
    "prefix_reuse": False,
    "layer_reuse": False,
    "defer_head": False,
    "trim_final": False,
    "skip_noop": False,
}


def _hooked(model, path: str, side: str, fn) -> torch.Tensor:
    """Last-position logits of BASE with `fn(tensor [1, s, w]) -> tensor` on the module's side."""
    module = model.get_submodule(path)
    if side == "output":
        handle = module.register_forward_hook(lambda m, a, out: fn(out))
    else:
        handle = module.register_forward_pre_hook(lambda m, a: (fn(a[0]), *a[1:]))
    try:
        with torch.no_grad():
            return model(input_ids=_ids(model, BASE), use_cache=False).logits[0, -1]
    finally:
        handle.remove()


def _ids(model, text: str) -> torch.Tensor:
    return torch.tensor([model._ivx_tokenizer(text, add_special_tokens=False)["input_ids"]])


def _source_value(model, path: str, side: str) -> torch.Tensor:
    seen = {}

    def keep(t):
        seen["v"] = t.detach().clone()

    module = model.get_submodule(path)
    handle = (
        module.register_forward_hook(lambda m, a, out: keep(out))
        if side == "output"
        else module.register_forward_pre_hook(lambda m, a: keep(a[0]))
    )
    with torch.no_grad():
        model(input_ids=_ids(model, SOURCE), use_cache=False)
    handle.remove()
    return seen["v"]  # [1, s, w]


def _edit(kind: str, position: int, source: torch.Tensor):
    def fn(t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        if kind == "vanilla":
            out[0, position] = source[0, position]
        elif kind == "zero":
            out[0, position] = 0
        elif kind == "scale":
            out[0, position] = 3.0 * t[0, position]
        elif kind == "addition":
            out[0, position] = t[0, position] + 0.5 * source[0, position]
        return out

    return fn


def _config(lm_dir: Path, component, kind: str, out: Path, batch: dict) -> dict:
    iv = {"kind": kind, "component": component, "layer": "$layer", "position": "$position"}
    iv |= {
        "vanilla": {"source": "source"},
        "scale": {"value": 3.0},
        "addition": {"source": "source", "coefficient": 0.5},
    }.get(kind, {})
    return {
        "name": "paths",
        "model": {"name": str(lm_dir), "bos": False},
        "prompts": [{"base": BASE, "source": SOURCE}],
        "sweep": {"layer": "all", "position": list(POSITIONS)},
        "interventions": [iv],
        "metrics": ["top_k"],
        "batch": batch,
        "output": {"root": str(out), "logits": "last", "plots": False, "report": False},
    }


@pytest.mark.parametrize("arch", sorted(PATHS))
def test_module_paths_equal_hand_hooks(arch: str, tiny_model_dir, tmp_path: Path) -> None:
    model = ivx.Model(str(tiny_model_dir(arch)))
    hf = model.hf
    hf._ivx_tokenizer = model.tokenizer
    template, side = PATHS[arch]
    component = {"module": template, "hook": side}
    checked = 0
    for kind, batch in (("vanilla", {}), ("vanilla", OFF), ("zero", {}), ("scale", {}), ("addition", {})):
        run = model.run(_config(tiny_model_dir(arch), component, kind, tmp_path, batch))
        assert len(run.results) == 2 * len(POSITIONS)
        for row in run.results.itertuples():
            path = template.replace("{layer}", str(row.layer))
            source = _source_value(hf, path, side)
            expected = _hooked(hf, path, side, _edit(kind, int(row.position), source))
            got = run.tensors[f"cell{row.cell}"]
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
            checked += 1
        unpatched = run.tensors["corrupted.prompt0"] if "corrupted.prompt0" in run.tensors else None
        if kind == "zero" and unpatched is not None:  # the edit does something
            assert float((run.tensors["cell0"] - unpatched).abs().max()) > 1e-6
    assert checked == 5 * 2 * len(POSITIONS)


def test_down_proj_input_is_mlp_activation(tiny_model_dir) -> None:
    """The same tensor by path and by name: identical captures."""
    model = ivx.Model(str(tiny_model_dir("llama")))
    lm = model.lm
    from ivx.model import components, hooks

    by_name = components.resolve(lm.model, lm.info, "mlp_activation", 1)
    by_path = components.resolve(
        lm.model, lm.info, from_value({"module": "model.layers.{layer}.mlp.down_proj", "hook": "input"}), 1
    )
    assert (by_path.module, by_path.hook, by_path.dim, by_path.layer) == (
        by_name.module,
        by_name.hook,
        by_name.dim,
        1,
    )
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad(), hooks.capturing(lm.model, [by_name, by_path]) as store:
        lm.model(ids)
    assert torch.equal(store[by_name], store[by_path]) and store[by_path].shape == (1, 5, lm.info.d_mlp)


def test_bad_paths_are_config_problems(tiny_model_dir, tmp_path: Path) -> None:
    from ivx.cli.app import app

    cfg = _config(
        tiny_model_dir("llama"), {"module": "model.layers.{layer}.mlp.act_fm"}, "zero", tmp_path, {}
    )
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "bad.yaml:" in result.output and "interventions[0].component" in result.output
    assert (
        "'model.layers.0.mlp.act_fm' does not exist" in result.output
        and "model.layers.0.mlp.act_fn" in result.output
    )
    swept = {**cfg, "sweep": {"component": ["mlp_output", "module:model.layers.{layer}.mlp.nope@input"]}}
    swept["interventions"] = [
        {**cfg["interventions"][0], "component": "$component", "layer": 1, "position": 2}
    ]
    path.write_text(yaml.safe_dump(swept, sort_keys=False))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "sweep.component[1]" in result.output, result.output
    assert "'model.layers.1.mlp.nope' does not exist" in result.output
    model = ivx.Model(str(tiny_model_dir("llama")))
    for component, message in (
        ({"module": "model.norm"}, "not inside a decoder block"),
        (
            {"module": "model.layers.{layer}.mlp", "hook": "middle"},
            "component.hook must be one of output, input",
        ),
        ({"module": "model.layers.{layr}.mlp"}, "at most the placeholder {layer}"),
        ({"module": "model.layers.{layer}.mlp", "head": 1}, "takes only module and hook"),
    ):
        with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
            model.run(_config(tiny_model_dir("llama"), component, "zero", tmp_path, {}))


def test_tensors_without_a_sequence_axis_are_refused() -> None:
    assert module_paths._checked_width("a.b", "output", (1, module_paths.PROBE, 8)) == 8
    assert module_paths._checked_width("a.b", "output", (module_paths.PROBE, 8)) == 8  # flattened tokens
    for shape, message in (
        ((1, 2, module_paths.PROBE, 8), r"shape \[1, 2, 4, 8\]"),
        ("Cache", "is a Cache, not a tensor"),
    ):
        with pytest.raises(module_paths.ModulePathError, match=message):
            module_paths._checked_width("a.b", "output", shape)


def test_a_steering_vector_must_fit_the_module(tiny_model_dir, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"iv0": torch.ones(7)}, str(tmp_path / "v.safetensors"))
    cfg = _config(
        tiny_model_dir("llama"), {"module": "model.layers.{layer}.mlp.act_fn"}, "zero", tmp_path, {}
    )
    cfg["interventions"] = [
        {
            "kind": "addition",
            "component": {"module": "model.layers.{layer}.mlp.act_fn"},
            "layer": 1,
            "position": 2,
            "vector": str(tmp_path / "v.safetensors"),
        }
    ]
    cfg.pop("sweep")
    with pytest.raises(
        ConfigError,
        match="has 7 dims but module:model.layers.{layer}.mlp.act_fn@output has 64".replace(
            "{", r"\{"
        ).replace("}", r"\}"),
    ):
        ivx.Model(str(tiny_model_dir("llama"))).run(cfg)
