"""Starting optimizer hyper-parameters per optimizer family and task, each row with its source.

The exports (DeepSpeed, torchtitan, Megatron-LM, the PyTorch snippet) write these values; they
are published recipes to start from and tune, not fitted to the user's model.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from advisor.config import Task


class Family(str, Enum):
    """Optimizers that share one set of hyper-parameters."""

    ADAMW = "adamw"
    ADAM = "adam"
    LION = "lion"
    SGD = "sgd"
    SGD_MOMENTUM = "sgd-momentum"
    LAMB = "lamb"
    ADAFACTOR = "adafactor"
    MUON = "muon"
    ZEROTH = "zeroth"


class Stage(str, Enum):
    """The three regimes the recipes differ by: from scratch, all weights, adapters."""

    PRETRAIN = "pretrain"
    FINETUNE = "finetune"
    ADAPTER = "adapter"


class Hyperparameters(BaseModel):
    """One optimizer's starting settings for one task, and where they come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(gt=0)
    betas: tuple[float, float] | None = None
    eps: float | None = None
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float | None = None
    source: str


_GPT3 = "GPT-3 (Brown et al. 2020, App. B: Adam beta1 0.9, beta2 0.95, eps 1e-8, weight decay 0.1)"
_LLAMA2 = (
    "Llama 2 (Touvron et al. 2023, sec. 2.2: AdamW (0.9, 0.95), wd 0.1, peak lr 3e-4 at 7B/13B)"
)
_HF_TRAINER = (
    "Hugging Face TrainingArguments defaults (adam_beta1 0.9, adam_beta2 0.999, adam_epsilon "
    "1e-8, weight_decay 0.0)"
)
_ALPACA = "Stanford Alpaca full fine-tune of LLaMA-7B (Taori et al. 2023: lr 2e-5, wd 0)"
_QLORA = "QLoRA (Dettmers et al. 2023, App. B.2: lr 2e-4 for 7B/13B adapters, Adam beta2 0.999)"
_LION = (
    "Lion (Chen et al. 2023, sec. 5: betas (0.9, 0.99); lr 3-10x smaller and weight decay "
    "3-10x larger than AdamW's, so lr x wd stays; we take the factor 3)"
)
_GOYAL = "Goyal et al. 2017 (ResNet-50 on ImageNet: lr 0.1 per 256 samples, momentum 0.9, wd 1e-4)"
_LOMO = (
    "LOMO (Lv et al. 2023; OpenLMLab/LOMO config/args_lomo.yaml: plain SGD lr 0.03, wd 0 on "
    "LLaMA-7B)"
)
_HEAVY_BALL = (
    "LOMO's SGD step lr 0.03 scaled by (1 - momentum): heavy-ball momentum mu multiplies a steady "
    "gradient's step by 1 / (1 - mu) (Sutskever et al. 2013, sec. 2)"
)
_LAMB = (
    "LAMB (You et al. 2020, BERT: betas (0.9, 0.999), eps 1e-6, wd 0.01); lr of the AdamW row: "
    "the trust ratio rescales each layer's step"
)
_T5 = (
    "Adafactor (Shazeer & Stern 2018); T5 (Raffel et al. 2020, sec. 3.1: pre-training lr 0.01, "
    "fine-tuning constant lr 1e-3); torch.optim.Adafactor's other defaults"
)
_MUON = "Muon (Jordan et al. 2024, reference implementation: lr 0.02, momentum 0.95)"
_MEZO = (
    "MeZO (Malladi et al. 2023, Table 15: full-parameter lr 1e-6..1e-7, LoRA lr 1e-4..5e-5, "
    "perturbation eps 1e-3)"
)
_ADAMW_PRETRAIN = Hyperparameters(
    lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, source=f"{_GPT3}; {_LLAMA2}"
)
_ADAMW_FINETUNE = Hyperparameters(
    lr=2e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, source=f"{_HF_TRAINER}; {_ALPACA}"
)
_ADAMW_ADAPTER = Hyperparameters(
    lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, source=f"{_QLORA}; {_HF_TRAINER}"
)
_ADAM_NOTE = (
    "; weight decay 0: Adam's L2 penalty is not decoupled weight decay (Loshchilov & Hutter "
    "2019), so decay belongs to AdamW"
)


def _round(x: float) -> float:
    """Three significant digits: a starting value, written as people write it (1e-4, 0.3)."""
    return float(f"{x:.3g}")


#: THE table: (family, stage) -> starting hyper-parameters with their source.
HYPERPARAMETERS: dict[tuple[Family, Stage], Hyperparameters] = {
    (Family.ADAMW, Stage.PRETRAIN): _ADAMW_PRETRAIN,
    (Family.ADAMW, Stage.FINETUNE): _ADAMW_FINETUNE,
    (Family.ADAMW, Stage.ADAPTER): _ADAMW_ADAPTER,
    **{
        (Family.ADAM, stage): row.model_copy(
            update={"weight_decay": 0.0, "source": row.source + _ADAM_NOTE}
        )
        for stage, row in (
            (Stage.PRETRAIN, _ADAMW_PRETRAIN),
            (Stage.FINETUNE, _ADAMW_FINETUNE),
            (Stage.ADAPTER, _ADAMW_ADAPTER),
        )
    },
    **{
        (Family.LION, stage): Hyperparameters(
            lr=_round(row.lr / 3),
            betas=(0.9, 0.99),
            weight_decay=_round(row.weight_decay * 3),
            source=_LION,
        )
        for stage, row in (
            (Stage.PRETRAIN, _ADAMW_PRETRAIN),
            (Stage.FINETUNE, _ADAMW_FINETUNE),
            (Stage.ADAPTER, _ADAMW_ADAPTER),
        )
    },
    (Family.SGD, Stage.PRETRAIN): Hyperparameters(lr=0.1, weight_decay=1e-4, source=_GOYAL),
    (Family.SGD, Stage.FINETUNE): Hyperparameters(lr=0.03, source=_LOMO),
    (Family.SGD, Stage.ADAPTER): Hyperparameters(lr=0.03, source=_LOMO),
    (Family.SGD_MOMENTUM, Stage.PRETRAIN): Hyperparameters(
        lr=0.1, momentum=0.9, weight_decay=1e-4, source=_GOYAL
    ),
    (Family.SGD_MOMENTUM, Stage.FINETUNE): Hyperparameters(
        lr=0.003, momentum=0.9, source=_HEAVY_BALL
    ),
    (Family.SGD_MOMENTUM, Stage.ADAPTER): Hyperparameters(
        lr=0.003, momentum=0.9, source=_HEAVY_BALL
    ),
    **{
        (Family.LAMB, stage): Hyperparameters(
            lr=row.lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, source=_LAMB
        )
        for stage, row in (
            (Stage.PRETRAIN, _ADAMW_PRETRAIN),
            (Stage.FINETUNE, _ADAMW_FINETUNE),
            (Stage.ADAPTER, _ADAMW_ADAPTER),
        )
    },
    (Family.ADAFACTOR, Stage.PRETRAIN): Hyperparameters(lr=1e-2, source=_T5),
    (Family.ADAFACTOR, Stage.FINETUNE): Hyperparameters(lr=1e-3, source=_T5),
    (Family.ADAFACTOR, Stage.ADAPTER): Hyperparameters(lr=1e-3, source=_T5),
    **{
        (Family.MUON, stage): Hyperparameters(lr=0.02, momentum=0.95, source=_MUON)
        for stage in Stage
    },
    (Family.ZEROTH, Stage.PRETRAIN): Hyperparameters(lr=1e-6, eps=1e-3, source=_MEZO),
    (Family.ZEROTH, Stage.FINETUNE): Hyperparameters(lr=1e-6, eps=1e-3, source=_MEZO),
    (Family.ZEROTH, Stage.ADAPTER): Hyperparameters(lr=1e-4, eps=1e-3, source=_MEZO),
}

# taxonomy id -> family, for the optimizers that have a recipe of their own. 8-bit and paged
# AdamW are drop-in replacements run at AdamW's settings (Dettmers et al. 2022, sec. 4); DP
# variants keep their base optimizer's settings (Abadi et al. 2016); LARS is SGD with momentum
# and a layer-wise trust ratio (You et al. 2017).
_OWN_FAMILY: dict[str, Family] = {
    "adamw": Family.ADAMW,
    "adamw-8bit": Family.ADAMW,
    "paged-adamw-8bit": Family.ADAMW,
    "dp-adam": Family.ADAMW,
    "adam": Family.ADAM,
    "lion": Family.LION,
    "sgd": Family.SGD,
    "dp-sgd": Family.SGD,
    "sgd-momentum": Family.SGD_MOMENTUM,
    "nesterov": Family.SGD_MOMENTUM,
    "lars": Family.SGD_MOMENTUM,
    "lamb": Family.LAMB,
    "adafactor": Family.ADAFACTOR,
    "muon": Family.MUON,
    "mezo": Family.ZEROTH,
    "zo-adam": Family.ZEROTH,
    "dp-zo": Family.ZEROTH,
}


def stage_of(task: Task) -> Stage:
    """The recipe regime of a task: LoRA and QLoRA train adapters."""
    return {
        Task.PRETRAIN: Stage.PRETRAIN,
        Task.FINETUNE: Stage.FINETUNE,
        Task.LORA: Stage.ADAPTER,
        Task.QLORA: Stage.ADAPTER,
    }[task]


def family_of(optimizer: str) -> tuple[Family, bool]:
    """The family whose row an optimizer uses, and whether the row is its own.

    Optimizers without a recipe here (Adam-mini, GaLore, Sophia, Shampoo, SOAP, ...) are
    compared by their authors against AdamW at AdamW's settings, so they start from the AdamW
    row; ``False`` says so, and callers pass them only the learning rate.
    """
    family = _OWN_FAMILY.get(optimizer)
    return (family, True) if family is not None else (Family.ADAMW, False)


def hyperparameters_for(optimizer: str, task: Task) -> Hyperparameters:
    """The starting hyper-parameters of a taxonomy optimizer for a task.

    Args:
        optimizer: the taxonomy id.
        task: what is trained.

    Returns:
        The table's row, with its source.
    """
    family, _own = family_of(optimizer)
    return HYPERPARAMETERS[(family, stage_of(task))]
