"""The FP8 recipes in the engines' own words, checked against the flags and keys their real
parsers accept (Megatron-Core v0.19.0's arguments, torchtitan v0.2.2's JobConfig), and the
recipe flag through the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from advisor.config import Fp8Recipe, Precision, Sharding, Task, TrainingConfig
from advisor.export import accelerate_emission, emit_deepspeed, emit_megatron, emit_torchtitan
from advisor.shell.cli import app
from tests.export.test_emit_layouts import MEG_FLAGS, _check_torchtitan, _megatron_args

runner = CliRunner()


def _plan(recipe: Fp8Recipe | None) -> TrainingConfig:
    return TrainingConfig(
        task=Task.PRETRAIN,
        precision=Precision.FP8_MIXED,
        gpus=8,
        sharding=Sharding.FSDP,
        fp8_recipe=recipe,
    )


@pytest.mark.parametrize(
    ("recipe", "fmt"),
    [("tensorwise", "hybrid"), ("delayed", "hybrid"), ("blockwise", "e4m3")],
)
def test_megatron_takes_its_own_recipes(recipe: str, fmt: str) -> None:
    emission = emit_megatron(_plan(Fp8Recipe(recipe)))
    args = dict(_megatron_args(emission.text))
    assert args["--fp8-recipe"] == recipe and args["--fp8-format"] == fmt
    for flag in ("--fp8-recipe", "--fp8-format"):
        assert args[flag] in MEG_FLAGS[flag]["choices"]
    assert emission.expressed_config.kernels.fp8_recipe is Fp8Recipe(recipe)


def test_megatron_has_no_rowwise_recipe_and_says_what_runs_instead() -> None:
    assert "rowwise" not in MEG_FLAGS["--fp8-recipe"]["choices"]
    emission = emit_megatron(_plan(Fp8Recipe.ROWWISE))
    assert dict(_megatron_args(emission.text))["--fp8-recipe"] == "blockwise"
    assert emission.expressed_config.kernels.fp8_recipe is Fp8Recipe.BLOCKWISE


def test_megatron_without_a_chosen_recipe_runs_what_was_priced() -> None:
    # Megatron's --fp8-recipe defaults to delayed; the plan was priced as tensorwise (the
    # recipe of the runs the FP8 share was fitted to), so the export names it.
    emission = emit_megatron(_plan(None))
    args = dict(_megatron_args(emission.text))
    assert args["--fp8-format"] == "hybrid" and args["--fp8-recipe"] == "tensorwise"


@pytest.mark.parametrize(
    ("recipe", "runs"),
    [
        ("tensorwise", "tensorwise"),
        ("rowwise", "rowwise"),
        ("blockwise", "rowwise"),
        ("delayed", "tensorwise"),
    ],
)
def test_torchtitan_float8_recipe_name(recipe: str, runs: str) -> None:
    emission = emit_torchtitan(_plan(Fp8Recipe(recipe)))
    flat = _check_torchtitan(emission.text)  # recipe_name among JobConfig's choices
    assert flat["model.converters"] == ["quantize.linear.float8"]
    assert emission.expressed_config.kernels.fp8_recipe is Fp8Recipe(runs)
    if runs == "tensorwise":
        # The converter's default; FSDP's float8 all-gather (8 shards) is tensorwise's.
        assert "quantize.linear.float8.recipe_name" not in flat
        assert flat["quantize.linear.float8.enable_fsdp_float8_all_gather"] is True
    else:
        # torchtitan asserts that a recipe_name comes without the float8 all-gather.
        assert flat["quantize.linear.float8.recipe_name"] == runs
        assert flat["quantize.linear.float8.enable_fsdp_float8_all_gather"] is False


_ESTIMATE = [
    "estimate",
    "--model",
    "llama-3.1-8b",
    "--hardware",
    "h100-sxm-80gb",
    "--task",
    "pretrain",
    "--checkpointing",
    "selective",
    "--json",
]
_RECOMMEND = [
    "recommend",
    "--no-calibrate",
    "--model",
    "llama-3.1-8b",
    "--hardware",
    "h100-sxm-80gb",
    "--gpus",
    "8",
    "--task",
    "pretrain",
    "--json",
    "--top",
    "3",
    "--fp8-recipe",
    "rowwise",
]


def _estimate(*flags: str) -> tuple[int, str]:
    result = runner.invoke(
        app,
        [*_ESTIMATE, *flags],
    )
    return result.exit_code, result.output


def test_estimate_recipe_flag() -> None:
    code, out = _estimate("--precision", "fp8-mixed", "--fp8-recipe", "blockwise")
    assert code == 0, out
    data = json.loads(out)
    assert data["config"]["fp8_recipe"] == "blockwise"
    assert "block" in data["step_time"]["components"]["fp8_casts"]["detail"]
    code, out = _estimate("--precision", "fp8-mixed")
    assert code == 0 and "fp8_recipe" not in json.loads(out)["config"]


@pytest.mark.parametrize(
    "flags",
    [
        ("--precision", "bf16-mixed", "--fp8-recipe", "rowwise"),
        ("--precision", "mxfp8-mixed", "--fp8-recipe", "blockwise"),
        ("--fp8-recipe", "rowwise"),
        ("--precision", "fp8-mixed", "--fp8-recipe", "perchannel"),
    ],
)
def test_estimate_refuses_a_recipe_without_fp8_mixed(flags: tuple[str, ...]) -> None:
    code, out = _estimate(*flags)
    assert code == 2
    assert out.startswith("Error: ") and "--fp8-recipe" in out and "Traceback" not in out


def test_recommend_runs_the_chosen_recipe_on_its_fp8_plans() -> None:
    result = runner.invoke(
        app,
        _RECOMMEND,
    )
    assert result.exit_code == 0, result.output
    recs = json.loads(result.stdout)["recommendations"]
    assert recs
    for r in recs:
        assert ("fp8_recipe" in r) is (r["precision"] == "fp8-mixed")
        if "fp8_recipe" in r:
            assert r["fp8_recipe"] == "rowwise"


def test_recommend_refuses_a_recipe_on_a_device_without_fp8() -> None:
    # The A100's datasheet has no FP8 tensor-core figure: no plan there runs fp8-mixed.
    flags = ["--model-size", "1.3B", "--hardware", "a100-sxm-80gb", "--fp8-recipe", "rowwise"]
    result = runner.invoke(app, ["recommend", "--no-calibrate", *flags])
    assert result.exit_code == 2
    assert result.output.startswith("Error: ") and "FP8" in result.output


def test_hardware_comparison_applies_the_recipe_where_fp8_runs() -> None:
    flags = ["--model-size", "1.3B", "--hardware", "a100-sxm-80gb,h100-sxm-80gb"]
    result = runner.invoke(
        app, ["recommend", "--no-calibrate", "--json", *flags, "--fp8-recipe", "blockwise"]
    )
    assert result.exit_code == 0, result.output
    picks = {o["hardware"]: o["pick"] for o in json.loads(result.stdout)["options"]}
    assert "fp8_recipe" not in picks["a100-sxm-80gb"]
    h100 = picks["h100-sxm-80gb"]
    assert ("fp8_recipe" in h100) is (h100["precision"] == "fp8-mixed")


@pytest.mark.parametrize(
    ("recipe", "says"),
    [
        (None, None),
        ("tensorwise", "Float8CurrentScaling()"),
        ("delayed", "DelayedScaling()"),
        ("blockwise", "Float8BlockScaling()"),
        ("rowwise", "from_recipe_name('rowwise')"),
    ],
)
def test_deepspeed_and_accelerate_name_the_recipe_class(
    recipe: str | None, says: str | None
) -> None:
    # Transformer Engine's recipe classes (transformer_engine.common.recipe); it has no
    # row-wise recipe, torchao's Float8Linear has.
    plan = _plan(None if recipe is None else Fp8Recipe(recipe))
    for notes in (emit_deepspeed(plan).notes, accelerate_emission(plan).notes):
        named = [n for n in notes if n.startswith(tuple(f"fp8 {r.value}" for r in Fp8Recipe))]
        if says is None:
            assert named == []
        else:
            assert len(named) == 1 and says in named[0]
