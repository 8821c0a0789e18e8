"""What every engine's export shares: the shared settings (gradient clipping, the NVMe folder,
the zeroth-order optimizers), the learning rate and hyper-parameter note, the notes for choices
that live in the model code, the plan summary line, and the taxonomy's implementation strings
checked before any of them reaches generated code."""

from __future__ import annotations

import ast

from advisor.config import Attention, Fp8Recipe, Precision, Task, TrainingConfig
from advisor.errors import UserError
from advisor.export.hyperparams import Hyperparameters, family_of, hyperparameters_for

# NOTE: every key the engine modules here write was checked against the projects' own code:
# DeepSpeed 0.19.8: https://www.deepspeed.ai/docs/config-json/ and deepspeed/runtime/config.py
# (tests load each file with DeepSpeedConfig); Accelerate 1.15: `accelerate config`
# (src/accelerate/commands/config/cluster.py) and ClusterConfig (config_args.py, which rejects
# unknown top-level keys; tests load each file with load_config_from_file); torchtitan v0.2.2
# (torchtitan/config/job_config.py, the last release with TOML job files); Megatron-LM
# core_v0.19.0 (megatron/training/arguments.py). tests/export/test_emit*.py hold the key lists.

#: Where NVMe offload writes unless the caller names a folder (DeepSpeed's docs use it too).
DEFAULT_NVME_PATH = "/local_nvme"

# Gradient clipping at global norm 1.0: the DeepSpeed default and the common LLM setting
# (GPT-3, Brown et al. 2020, App. B; Llama 2, Touvron et al. 2023, sec. 2.2).
GRADIENT_CLIPPING = 1.0
#: Zeroth-order optimizers: two forwards, no backward (Malladi et al. 2023).
ZEROTH = frozenset({"mezo", "zo-adam", "dp-zo"})


def resolve_learning_rate(config: TrainingConfig, learning_rate: float | None) -> float:
    """The lr to write: the caller's, else the hyper-parameter table's for the plan."""
    if learning_rate is not None:
        return learning_rate
    return hyperparameters_for(config.optimizer, config.task).lr


def hyper_note(config: TrainingConfig) -> str:
    """The note naming the hyper-parameters written, the table row they come from and its source."""
    hp = hyperparameters_for(config.optimizer, config.task)
    family, own = family_of(config.optimizer)
    row = "its own row" if own else f"the {family.value} row (no recipe of its own here)"
    return (
        f"{config.optimizer} hyper-parameters for {config.task.value} from {row}: "
        f"{_describe(hp)}. Source: {hp.source}. A starting point to tune, not a fit."
    )


def _describe(hp: Hyperparameters) -> str:
    parts = [f"lr {hp.lr:g}"]
    if hp.betas is not None:
        parts.append(f"betas {hp.betas}")
    if hp.eps is not None:
        parts.append(f"eps {hp.eps:g}")
    if hp.momentum is not None:
        parts.append(f"momentum {hp.momentum:g}")
    parts.append(f"weight decay {hp.weight_decay:g}")
    return ", ".join(parts)


def common_notes(config: TrainingConfig) -> list[str]:
    """Notes for choices that live in the model code, not in an engine's config file."""
    notes: list[str] = []
    attn = {
        Attention.FLASH: "sdpa with the FLASH_ATTENTION backend (or attn_implementation="
        "'flash_attention_2' for Hugging Face models)",
        Attention.MEM_EFFICIENT: "sdpa with the EFFICIENT_ATTENTION backend",
        Attention.EAGER: "eager attention (SDPA's MATH backend)",
    }[config.kernels.attention]
    notes.append(f"attention is chosen in the model code, not here: use {attn}.")
    if config.task is Task.LORA:
        notes.append(
            f"LoRA (rank {config.adapters.lora_rank}) is applied in the model code "
            "(peft.LoraConfig or "
            "the wrapper in the --emit torch snippet); only adapter weights are trainable."
        )
    if config.task is Task.QLORA:
        notes.append(
            f"QLoRA (rank {config.adapters.lora_rank}) needs bitsandbytes and a CUDA GPU: load "
            "the base "
            "model with transformers.BitsAndBytesConfig(load_in_4bit=True, "
            "bnb_4bit_quant_type='nf4') before applying LoRA."
        )
    if config.dp_sgd:
        notes.append(
            "DP-SGD (Abadi et al. 2016) needs per-sample gradients (Opacus), which neither "
            "DeepSpeed nor Accelerate configures; see the --emit torch snippet's notes."
        )
    if config.optimizer in ZEROTH:
        notes.append(
            f"{config.optimizer} is zeroth-order (two forwards, no backward; Malladi et al. "
            "2023): the engine's backward/step loop does not apply; use the --emit torch "
            "snippet's MeZO loop and this file only for sharding and precision."
        )
    if config.kernels.loss_fused:
        notes.append(
            "the plan counts a fused/chunked cross-entropy (no full fp32 logits): use Liger's "
            "LigerFusedLinearCrossEntropyLoss or a chunked loss in the model code."
        )
    if config.savers.optimizer_in_backward:
        notes.append(
            "the plan steps each parameter in backward (LOMO, Lv et al. 2023): register "
            "torch's Tensor.register_post_accumulate_grad_hook per parameter (see the --emit "
            "torch snippet); gradient clipping by global norm is not possible then."
        )
    if config.savers.activation_offload:
        notes.append(
            "the plan keeps checkpointed block inputs in host memory: wrap the blocks with "
            "torchao/torchtune's OffloadActivations (torch.autograd.graph.saved_tensors_hooks)."
        )
    notes.append(hyper_note(config))
    return notes


def parse_implementation(implementation: str) -> tuple[str, str]:
    """Split ``pkg.mod.Class(k=v, ...)`` into the dotted path and the kwargs source text.

    Raises:
        UserError: when the kwargs are not literal keyword arguments.
    """
    path, _, rest = implementation.partition("(")
    if "[" in path:
        raise UserError(
            f"{implementation!r} is not an optimizer implementation", "check rules/taxonomy.yaml"
        )
    kwargs = rest[:-1] if rest.endswith(")") else rest
    if kwargs.strip():
        try:
            call = ast.parse(f"f({kwargs})", mode="eval").body
        except SyntaxError as exc:
            raise UserError(
                f"cannot parse the arguments of {implementation!r}", "check rules/taxonomy.yaml"
            ) from exc
        # NOTE: only literal keyword arguments reach the generated code, so the taxonomy
        # cannot inject statements into a file users will run.
        if not isinstance(call, ast.Call) or call.args:
            raise UserError(f"{implementation!r}: keyword arguments only", "fix the taxonomy")
        for kw in call.keywords:
            ast.literal_eval(kw.value)
    return path.strip(), kwargs.strip()


def plan_summary(config: TrainingConfig) -> str:
    """One line naming the plan's choices (the snippet's docstring, torchtitan's description)."""
    return (
        f"task={config.task.value} optimizer={config.optimizer} "
        f"precision={config.precision.value} attention={config.kernels.attention.value} "
        f"checkpointing={config.savers.checkpointing.value} micro_batch={config.batch.micro_batch} "
        f"grad_accumulation={config.batch.grad_accumulation} "
        f"sharding={config.layout.sharding.value} "
        f"offload={config.savers.offload.value}"
    )


# Transformer Engine's recipe class per FP8 recipe (transformer_engine.common.recipe:
# Float8CurrentScaling, DelayedScaling, Float8BlockScaling); TE has no row-wise recipe.
_TE_FP8_RECIPE = {
    Fp8Recipe.TENSORWISE: "Float8CurrentScaling()",
    Fp8Recipe.DELAYED: "DelayedScaling()",
    Fp8Recipe.BLOCKWISE: "Float8BlockScaling()",
}


def fp8_recipe_note(config: TrainingConfig) -> str | None:
    """How the script runs a chosen FP8 recipe under Transformer Engine (None where the plan
    is not fp8-mixed or chose none: the engines' own defaults then stand)."""
    recipe = config.kernels.fp8_recipe
    if config.precision is not Precision.FP8_MIXED or recipe is None:
        return None
    te = _TE_FP8_RECIPE.get(recipe)
    if te is None:
        return (
            "fp8 rowwise: Transformer Engine has no row-wise recipe; run the linear layers as "
            "torchao Float8Linear with Float8LinearConfig.from_recipe_name('rowwise')"
        )
    return f"fp8 {recipe.value}: pass recipe={te} to te.fp8_autocast in the script"
