"""The optimizer hyper-parameter table: one row per family and task, each with its source."""

from __future__ import annotations

import itertools

from advisor.config import Task
from advisor.export.hyperparams import (
    HYPERPARAMETERS,
    Family,
    Stage,
    family_of,
    hyperparameters_for,
)
from advisor.rules.taxonomy import Category, load_taxonomy


def test_every_family_and_stage_has_a_sourced_row() -> None:
    for family, stage in itertools.product(Family, Stage):
        row = HYPERPARAMETERS[(family, stage)]
        # A source names a paper or a code base with a year or a file, not just a word.
        assert len(row.source) > 40 and any(ch.isdigit() for ch in row.source), row
    assert len(HYPERPARAMETERS) == len(Family) * len(Stage)


def test_pretraining_adamw_is_the_published_recipe() -> None:
    # GPT-3 (Brown et al. 2020, App. B) and Llama 2 (Touvron et al. 2023, sec. 2.2).
    row = hyperparameters_for("adamw", Task.PRETRAIN)
    assert row.betas == (0.9, 0.95) and row.eps == 1e-8 and row.weight_decay == 0.1
    assert "Brown et al. 2020" in row.source and "Touvron et al. 2023" in row.source


def test_fine_tuning_adamw_uses_trainer_defaults() -> None:
    # Hugging Face TrainingArguments: adam_beta2 0.999, weight_decay 0.0 (issue 12: the
    # export used these for pre-training too).
    for task in (Task.FINETUNE, Task.LORA, Task.QLORA):
        row = hyperparameters_for("adamw", task)
        assert row.betas == (0.9, 0.999) and row.weight_decay == 0.0
    assert (
        hyperparameters_for("adamw", Task.LORA).lr > hyperparameters_for("adamw", Task.FINETUNE).lr
    )  # adapters take a ~10x larger lr (QLoRA 2e-4 vs full fine-tuning 2e-5)


def test_lion_is_3_to_10x_smaller_lr_and_larger_decay_than_adamw() -> None:
    # Chen et al. 2023, sec. 5: keep lr x weight decay, divide lr by 3-10.
    for task in Task:
        lion, adamw = hyperparameters_for("lion", task), hyperparameters_for("adamw", task)
        # Three significant digits: 2e-5 / 3 is written 6.67e-6.
        assert 3 * 0.999 <= adamw.lr / lion.lr <= 10
        product = adamw.lr * adamw.weight_decay
        assert abs(lion.lr * lion.weight_decay - product) <= 1e-3 * product


def test_every_taxonomy_optimizer_gets_a_row() -> None:
    optimizers = load_taxonomy().by_category(Category.OPTIMIZER)
    own = 0
    for tech in optimizers:
        for task in Task:
            assert hyperparameters_for(tech.id, task).lr > 0
        own += family_of(tech.id)[1]
    # The optimizers with recipes of their own (not AdamW's as a drop-in start).
    assert own >= 15
