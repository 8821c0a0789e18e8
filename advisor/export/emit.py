"""``emit_config``: the one entry point behind ``--emit TARGET``, dispatching to the engine's
module."""

from __future__ import annotations

from advisor.config import TrainingConfig
from advisor.export.accelerate import accelerate_emission
from advisor.export.deepspeed import emit_deepspeed
from advisor.export.emission import Emission, EmitTarget
from advisor.export.megatron import emit_megatron
from advisor.export.torch_snippet import torch_emission
from advisor.export.torchtitan import emit_torchtitan


def emit_config(
    target: EmitTarget,
    config: TrainingConfig,
    *,
    nodes: int = 1,
    gpus_per_node: int | None = None,
    optimizer_implementation: str | None = None,
    learning_rate: float | None = None,
    cpu: bool = False,
    nvme_path: str | None = None,
    num_layers: int | None = None,
) -> Emission:
    """Emit one target's file for a configuration (what ``--emit TARGET`` writes).

    Args:
        target: deepspeed, accelerate, torch, torchtitan or megatron.
        config: the configuration to emit.
        nodes: machines.
        gpus_per_node: processes per machine (default ``config.world_size // nodes``).
        optimizer_implementation: the taxonomy's implementation string.
        learning_rate: the lr to write (default: the hyper-parameter table's).
        cpu: the plan is for CPUs (Accelerate writes ``use_cpu: true``; GPU-only engines
            refuse).
        nvme_path: the NVMe folder for NVMe offload (DeepSpeed).
        num_layers: the model's blocks (torchtitan's virtual pipeline stages).

    Returns:
        The file name, text and notes, and the plan the file expresses (``differs`` when it
        is not the ranked plan, with the ``reason``).

    Raises:
        UserError: when nodes and GPUs disagree, the engine cannot express the layout, or an
            implementation cannot be emitted.
    """
    if target is EmitTarget.DEEPSPEED:
        return emit_deepspeed(
            config,
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            optimizer_implementation=optimizer_implementation,
            learning_rate=learning_rate,
            cpu=cpu,
            nvme_path=nvme_path,
        ).to_emission()
    if target is EmitTarget.ACCELERATE:
        return accelerate_emission(config, nodes=nodes, gpus_per_node=gpus_per_node, cpu=cpu)
    if target is EmitTarget.TORCHTITAN:
        return emit_torchtitan(
            config,
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            learning_rate=learning_rate,
            num_layers=num_layers,
            cpu=cpu,
        )
    if target is EmitTarget.MEGATRON:
        return emit_megatron(
            config, nodes=nodes, gpus_per_node=gpus_per_node, learning_rate=learning_rate, cpu=cpu
        )
    return torch_emission(
        config,
        optimizer_implementation=optimizer_implementation,
        learning_rate=learning_rate,
        cpu=cpu,
    )
