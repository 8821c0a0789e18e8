"""Image models through `recommend`: the published recipes' choices, the advice they come
with, images as the batch and throughput unit, and one-line refusals of what a CNN is not.

The recipes: ResNet-50 on ImageNet with SGD + momentum at 256 images (He et al. 2016) and
data parallelism; Goyal et al. 2017's linear scaling with a 5-epoch warm-up up to 8k;
ViT with AdamW (Dosovitskiy et al. 2021; Touvron et al. 2021). Profiles make the costs
analytic, so these run anywhere.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from advisor.app.recommend import RecommendRequest, run_recommend
from advisor.model import get_model_profile
from advisor.plan import RecommendReport
from advisor.shell.cli import app

RECIPE = {"sgd-momentum", "nesterov", "lars", "lamb", "adamw"}
runner = CliRunner()


def rec(model: str, **flags: object) -> RecommendReport:
    defaults: dict[str, object] = {"calibrate": False, **flags}
    spec = get_model_profile(model)
    return run_recommend(RecommendRequest.from_flags(spec=spec, **defaults))  # type: ignore[arg-type]


def advice(r: RecommendReport) -> set[str]:
    return {a.rule for a in r.advice}


def test_resnet50_on_8_v100_is_the_classic_recipe() -> None:
    r = rec("resnet-50", task="pretrain", hardware="v100-32gb", gpus=8)
    w = r.workload
    # He et al. 2016: 256 images per step; one image per "token".
    assert (w.global_batch, w.seq_len, w.image_size) == (256, 1, 224)
    top = r.recommendations[0]
    assert top.optimizer in {"sgd-momentum", "nesterov"}
    assert top.tensor_parallel == top.pipeline_parallel == 1
    assert top.data_parallel == 8 and top.micro_batch * top.grad_accumulation == 32
    assert top.images_per_s == pytest.approx(256 / top.step_time_s)
    # Every ranked plan uses a recipe optimizer, and the report says how to set its rate.
    assert {x.optimizer for x in r.recommendations} <= RECIPE
    assert {"goyal-linear-scaling-recipe", "channels-last-for-cnns-on-tensor-cores"} <= advice(r)


def test_vit_b16_pretraining_picks_adamw_with_197_tokens_per_image() -> None:
    r = rec("vit-b-16", task="pretrain", hardware="a100-sxm-80gb", gpus=8)
    w = r.workload
    # Dosovitskiy et al. 2021: 4096 images per step; 14 x 14 patches and a class token.
    assert (w.global_batch, w.seq_len, w.image_size) == (4096, 197, 224)
    top = r.recommendations[0]
    assert top.optimizer == "adamw"
    assert top.images_per_s == pytest.approx(4096 / top.step_time_s)
    assert top.tokens_per_s == pytest.approx(197 * top.images_per_s)
    assert "fused-cross-entropy" not in {s for x in r.recommendations for s in x.memory_savers}
    assert "channels-last-for-cnns-on-tensor-cores" not in advice(r)


def test_small_per_device_batches_get_the_batchnorm_advice() -> None:
    # 32 images over 8 GPUs: 4 per device, where BatchNorm's statistics break down (Wu & He
    # 2018: ResNet-50 lost ~10 points at 2 images per GPU).
    small = rec("resnet-50", task="pretrain", hardware="a100-sxm-80gb", gpus=8, global_batch=32)
    assert "groupnorm-for-small-micro-batches" in advice(small)
    text = next(a.rationale for a in small.advice if a.rule == "groupnorm-for-small-micro-batches")
    assert "SyncBatchNorm" in text or "GroupNorm" in text
    usual = rec("resnet-50", task="pretrain", hardware="a100-sxm-80gb", gpus=8)
    assert "groupnorm-for-small-micro-batches" not in advice(usual)


def test_language_model_facts_keep_their_old_micro_batch() -> None:
    # The per-device images feed the normalisation rules; a language model's micro-batch
    # fact stays what it was (1 unless pinned), so its rules fire as before.
    r = rec("opt-125m", hardware="a100-sxm-80gb", gpus=8)
    assert r.workload.image_size is None
    assert all(x.images_per_s is None for x in r.recommendations)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["estimate", "--model", "resnet-50", "--seq-len", "512"], "--seq-len does not apply"),
        (["estimate", "--model", "vit-b-16", "--seq-len", "256"], "197 tokens per 224 px"),
        (["estimate", "--model", "resnet-50", "--task", "lora"], "lora adapts transformer"),
        (["estimate", "--model", "resnet-50", "--checkpointing", "full"], "checkpointing"),
        (["estimate", "--model", "resnet-50", "--precision", "fp8-mixed"], "fp8"),
        (
            ["estimate", "--model", "resnet-50", "--gpus", "2", "--tensor-parallel", "2"],
            "tensor and pipeline",
        ),
        (["recommend", "--model", "resnet-50", "--no-calibrate", "--task", "qlora"], "qlora"),
        (["recommend", "--model", "resnet-50", "--no-calibrate", "--tp", "2"], "--tp/--pp"),
        (
            ["recommend", "--model", "vit-b-16", "--no-calibrate", "--global-batch-tokens", "1M"],
            "image model",
        ),
    ],
)
def test_what_an_image_model_is_not_gets_one_line(argv: list[str], says: str) -> None:
    result = runner.invoke(app, [*argv, "--hardware", "a100-sxm-80gb"])
    assert result.exit_code == 2, result.output
    first, *rest = result.output.strip().splitlines()
    assert first.startswith("Error: ") and says in first, first
    assert all(line.startswith("  hint: ") for line in rest)
    assert "Traceback" not in result.output


def test_estimate_reports_images_per_second() -> None:
    import json

    result = runner.invoke(
        app,
        ["estimate", "--model", "resnet-50", "--hardware", "v100-32gb", "--micro-batch", "64",
         "--optimizer", "sgd-momentum", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["image_size"] == 224
    assert data["images_per_s"] == pytest.approx(64 / data["step_time"]["seconds"])
    assert data["step_time"]["components"]["attention"]["seconds"] == 0
