"""Config emitters: one TrainingConfig as DeepSpeed JSON, Accelerate YAML, a torchtitan job TOML,
Megatron-LM arguments or a runnable PyTorch snippet.

Each emission says which plan the file really sets up (``expressed_config``): where an engine
cannot express the ranked plan, it names the nearest one it can (``differs`` and ``reason``),
so the report can price that one instead of silently handing over a different plan.

One module per engine (``deepspeed``, ``accelerate``, ``torchtitan``, ``megatron``,
``torch_snippet``); ``emission`` holds the result types, ``expression`` the plan an engine's
file sets up, ``common`` what every engine shares, ``hyperparams`` the starting
hyper-parameters, ``emit`` the ``--emit`` dispatcher; ``templates/`` the snippet's fixed code.
"""

from __future__ import annotations

from advisor.export.accelerate import accelerate_emission, emit_accelerate
from advisor.export.common import DEFAULT_NVME_PATH
from advisor.export.deepspeed import BUCKET_ELEMENTS, DeepSpeedEmission, emit_deepspeed
from advisor.export.emission import Emission, EmitTarget
from advisor.export.emit import emit_config
from advisor.export.expression import same_plan, world_size
from advisor.export.megatron import emit_megatron
from advisor.export.torch_snippet import emit_torch, torch_emission
from advisor.export.torchtitan import emit_torchtitan

__all__ = [
    "BUCKET_ELEMENTS",
    "DEFAULT_NVME_PATH",
    "DeepSpeedEmission",
    "Emission",
    "EmitTarget",
    "accelerate_emission",
    "emit_accelerate",
    "emit_config",
    "emit_deepspeed",
    "emit_megatron",
    "emit_torch",
    "emit_torchtitan",
    "same_plan",
    "torch_emission",
    "world_size",
]
