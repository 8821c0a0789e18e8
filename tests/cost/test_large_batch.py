"""Past the critical batch (the rule base's thresholds: 16k sequences for transformers, 8k
images for CNNs), AdamW and SGD with their usual recipes stop training stably and the
layer-wise methods win on steps to the target (You et al. 2017, 2019; Goyal et al. 2017),
with Nado et al. 2021's re-tuned AdamW/Nesterov as the pessimistic end."""

from __future__ import annotations

import pytest

from advisor.config import Task
from advisor.cost.convergence import BatchRegime, critical_batch, plan_steps
from advisor.model.shape import Arch
from advisor.rules.ruleset import load_rules
from advisor.rules.taxonomy import load_taxonomy

TAX = load_taxonomy()
BERT_LARGE = 335_000_000  # You et al. 2019, Table 1
RESNET50 = 25_600_000


def _steps(optimizer: str, batch: int, arch: Arch, n: int = BERT_LARGE) -> tuple[float, ...]:
    r = plan_steps(
        TAX, optimizer, Task.PRETRAIN, n, None, BatchRegime(global_batch=batch, arch=arch)
    )
    return r.low, r.central, r.high


def _rule_threshold(rule_id: str) -> float:
    rule = load_rules([], technique_ids=set(TAX.ids())).get(rule_id)
    assert rule is not None
    bounds = [c.ge for c in rule.rule.when.all if getattr(c, "fact", None) == "global_batch"]  # type: ignore[union-attr]
    assert len(bounds) == 1 and bounds[0] is not None
    return float(bounds[0])


@pytest.mark.parametrize(
    ("technique", "rule", "arch"),
    [
        ("lamb", "lamb-for-very-large-transformer-batches", Arch.ENCODER),
        ("lars", "lars-for-very-large-cnn-batches", Arch.CNN),
    ],
)
def test_the_critical_batch_is_the_rule_bases_own_threshold(
    technique: str, rule: str, arch: Arch
) -> None:
    data = TAX.get(technique).steps_vs_adamw
    assert data is not None and data.large_batch is not None
    assert data.large_batch.from_global_batch == _rule_threshold(rule)
    assert critical_batch(TAX, arch) == data.large_batch.from_global_batch


def test_lamb_needs_fewer_steps_than_adamw_at_bert_32k_and_nado_bounds_it() -> None:
    # You et al. 2019: LAMB reaches BERT's F1 at 32k where AdamW does not; Nado et al. 2021:
    # re-tuned Adam matches LAMB there (the pessimistic end is AdamW's own count).
    low, central, high = _steps("lamb", 32_768, Arch.ENCODER)
    assert low < central < 1.0
    assert high == pytest.approx(1.0)
    assert _steps("adamw", 32_768, Arch.ENCODER) == (1.0, 1.0, 1.0)


def test_below_the_critical_batch_lamb_is_adamw_and_nothing_changes() -> None:
    # Nado et al. 2021: at ordinary batches the layer-wise methods buy nothing.
    for opt in ("lamb", "muon", "soap", "adamw"):
        ordinary = plan_steps(TAX, opt, Task.PRETRAIN, BERT_LARGE)
        assert _steps(opt, 256, Arch.ENCODER) == (ordinary.low, ordinary.central, ordinary.high)
    assert _steps("lamb", 256, Arch.ENCODER)[1] == pytest.approx(1.0)


@pytest.mark.parametrize("optimizer", ["muon", "soap", "lion", "adafactor"])
def test_ordinary_batch_gains_are_not_carried_past_the_critical_batch(optimizer: str) -> None:
    # Their published ratios come from runs at ordinary batches (<= a few M tokens).
    low, central, high = _steps(optimizer, 32_768, Arch.ENCODER)
    assert central == pytest.approx(1.0)
    assert low <= 1.0 <= high


def test_the_regime_is_per_architecture_lars_for_cnns_lamb_for_transformers() -> None:
    # Goyal et al. 2017 / You et al. 2017: ResNet-50 past 8k images wants LARS.
    assert _steps("lars", 32_768, Arch.CNN, RESNET50)[1] < 1.0
    assert _steps("lamb", 32_768, Arch.CNN, RESNET50)[1] == pytest.approx(1.0)
    assert _steps("lars", 32_768, Arch.ENCODER)[1] == pytest.approx(1.0)
    # 8k-16k sequences: a transformer is not yet past its (16k) threshold.
    assert _steps("lamb", 8_192, Arch.DECODER)[1] == pytest.approx(1.0)


def test_fine_tuning_is_never_in_the_large_batch_regime() -> None:
    r = plan_steps(
        TAX,
        "lamb",
        Task.FINETUNE,
        BERT_LARGE,
        None,
        BatchRegime(global_batch=32_768, arch=Arch.ENCODER),
    )
    assert r.central == pytest.approx(1.0)
