"""MXFP8 and NVFP4 plans in the engines' own words: Megatron-LM's Transformer Engine flags
and torchtitan's MX converter, checked against the flags and keys their real parsers
accept (the fixtures dumped from Megatron-Core v0.19.0 and torchtitan v0.2.2)."""

from __future__ import annotations

from advisor.config import Precision, Task, TrainingConfig
from advisor.export import accelerate_emission, emit_deepspeed, emit_megatron, emit_torchtitan
from tests.export.test_emit_layouts import MEG_FLAGS, _check_torchtitan, _megatron_args


def _plan(precision: Precision) -> TrainingConfig:
    return TrainingConfig(task=Task.PRETRAIN, precision=precision, gpus=8)


def test_megatron_takes_the_mxfp8_recipe() -> None:
    args = dict(_megatron_args(emit_megatron(_plan(Precision.MXFP8_MIXED)).text))
    assert args["--fp8-recipe"] == "mxfp8" and "--bf16" in args
    for flag in ("--fp8-recipe", "--fp8-format"):
        assert args[flag] in MEG_FLAGS[flag]["choices"]


def test_megatron_takes_the_nvfp4_recipe_with_bf16_end_layers() -> None:
    args = dict(_megatron_args(emit_megatron(_plan(Precision.NVFP4_MIXED)).text))
    assert (args["--fp4-format"], args["--fp4-recipe"]) == ("e2m1", "nvfp4")
    for flag in ("--fp4-format", "--fp4-recipe"):
        assert args[flag] in MEG_FLAGS[flag]["choices"]
    # NVIDIA's recipe keeps the first and last blocks in bf16 (arXiv 2509.25149, sec. 4).
    assert "--first-last-layers-bf16" in args
    assert MEG_FLAGS["--first-last-layers-bf16"]["takes_value"] is False
    assert "--fp8-format" not in args


def test_torchtitan_uses_its_mx_converter_for_mxfp8() -> None:
    flat = _check_torchtitan(emit_torchtitan(_plan(Precision.MXFP8_MIXED)).text)
    assert flat["model.converters"] == ["quantize.linear.mx"]
    assert flat["quantize.linear.mx.filter_fqns"] == ["output"]
    assert "quantize.linear.float8.filter_fqns" not in flat


def test_torchtitan_runs_nvfp4_plans_as_mxfp8_and_says_so() -> None:
    emission = emit_torchtitan(_plan(Precision.NVFP4_MIXED))
    flat = _check_torchtitan(emission.text)
    assert flat["model.converters"] == ["quantize.linear.mx"]
    assert emission.differs and "NVFP4" in emission.reason
    assert emission.expressed_config.precision is Precision.MXFP8_MIXED


def test_other_engines_say_which_transformer_engine_recipe_to_run() -> None:
    for precision, recipe in (
        (Precision.MXFP8_MIXED, "MXFP8BlockScaling"),
        (Precision.NVFP4_MIXED, "NVFP4BlockScaling"),
    ):
        ds = emit_deepspeed(_plan(precision))
        assert any(recipe in n for n in ds.notes) and ds.config["bf16"] == {"enabled": True}
        acc = accelerate_emission(_plan(precision))
        assert "mixed_precision: fp8" in acc.text
        assert any(recipe in n for n in acc.notes)
