"""The plan an engine's file expresses: device counts checked against the layout, the
data-parallel form of a TP/PP plan, hybrid-sharding degrees, and the record of every change
from the ranked plan (``Expressed``) with its reason."""

from __future__ import annotations

from typing import Any

from advisor.config import Sharding, TrainingConfig
from advisor.errors import UserError


def world_size(config: TrainingConfig, nodes: int = 1, gpus_per_node: int | None = None) -> int:
    """The number of processes (devices), checked against ``config.world_size``.

    Args:
        config: the configuration; ``config.world_size`` = data x tensor x pipeline degrees.
        nodes: the number of machines.
        gpus_per_node: processes per machine; default ``config.world_size // nodes``.

    Returns:
        ``nodes * gpus_per_node``.

    Raises:
        UserError: when the three numbers disagree or are not positive.
    """
    if nodes < 1:
        raise UserError(f"--nodes must be at least 1, not {nodes}", "pass --nodes 1 or more")
    devices = config.layout.world_size
    if gpus_per_node is None:
        if devices % nodes:
            raise UserError(
                f"{devices} devices do not split evenly over {nodes} nodes",
                "make --gpus a multiple of --nodes",
            )
        gpus_per_node = devices // nodes
    if gpus_per_node < 1:
        raise UserError(f"{gpus_per_node} GPUs per node", "pass at least one GPU per node")
    total = nodes * gpus_per_node
    if total != devices:
        raise UserError(
            f"{nodes} nodes x {gpus_per_node} GPUs = {total}, but the plan is for "
            f"{devices} devices ({config.layout.data_parallel} data x "
            f"{config.layout.tensor_parallel} tensor x "
            f"{config.layout.pipeline_parallel} pipeline"
            + (
                f" x {config.layout.context_parallel} context"
                if config.layout.context_parallel > 1
                else ""
            )
            + " parallel)",
            "make --gpus equal to the total number of GPUs",
        )
    return total


def same_plan(a: TrainingConfig, b: TrainingConfig) -> bool:
    """Whether two configs are one plan: FSDP full shard and ZeRO-3 shard the same states
    (Rajbhandari et al. 2020; Zhao et al. 2023), so the memory model prices them alike."""

    def key(c: TrainingConfig) -> TrainingConfig:
        return c.with_(sharding=Sharding.ZERO3) if c.layout.sharding is (Sharding.FSDP) else c

    return key(a) == key(b)


class Expressed:
    """The plan a file really sets up, built change by change with the reason for each."""

    def __init__(self, config: TrainingConfig) -> None:
        self.ranked = config
        self.config = config
        self.reasons: list[str] = []

    def change(self, reason: str, *, same_plan: bool = False, **update: Any) -> None:
        """Move the expressed plan; ``same_plan`` marks a relabelling that changes neither
        memory nor time (ZeRO over one rank, hybrid sharding with one replica). ``update``
        names fields as :meth:`TrainingConfig.with_` does (an unknown name is a TypeError)."""
        self.config = self.config.with_(**update)
        if same_plan:
            self.ranked = self.ranked.with_(**update)
        else:
            self.reasons.append(reason)

    @property
    def differs(self) -> bool:
        return not same_plan(self.ranked, self.config)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) if self.differs else ""


def data_parallel_form(
    config: TrainingConfig, engine: str, full_shard: Sharding
) -> tuple[dict[str, Any], str]:
    """The plan's data-parallel form, for engines whose config file has no TP/PP degrees.

    DeepSpeed's JSON and Accelerate's YAML cannot set up tensor or pipeline parallelism (it
    lives in the model code), so their file runs every device as a data-parallel rank; TP and
    PP split the weights, so the parameters are sharded too (``full_shard``: ZeRO-3 or FSDP)
    unless the plan shards them already. A TP group shares each micro-batch, so each rank
    takes 1/TP of it; accumulation keeps the global batch. The change is stated, never
    silent, and the caller prices that plan; the ranked layout itself is in
    ``--emit torchtitan`` and ``--emit megatron``.

    Returns:
        The fields to change (empty when the plan has no TP/PP) and the reason.
    """
    model_parallel = config.layout.tensor_parallel * config.layout.pipeline_parallel
    if model_parallel == 1:
        return {}, ""
    planned = (
        config.batch.micro_batch * config.batch.grad_accumulation * config.layout.data_parallel
    )
    # Context-parallel ranks stay context parallel (the caller folds them where the engine
    # cannot split sequences): the data-parallel ranks are the rest.
    ranks = config.layout.world_size // config.layout.context_parallel
    micro = max(1, config.batch.micro_batch // config.layout.tensor_parallel)
    accumulation = max(1, round(planned / (micro * ranks)))
    update: dict[str, Any] = {
        "micro_batch": micro,
        "data_parallel": ranks,
        "tensor_parallel": 1,
        "pipeline_parallel": 1,
        "virtual_stages": 1,
        "grad_accumulation": accumulation,
    }
    sharded = "the planned sharding"
    if config.layout.sharding.zero_stage < 3:
        update["sharding"] = full_shard
        sharded = f"{full_shard.value} sharding (TP/PP split the weights; this splits them too)"
    emitted = micro * accumulation * ranks
    batch = "" if emitted == planned else f"; global batch {emitted} instead of {planned}"
    reason = (
        f"{engine} cannot set up tensor parallelism {config.layout.tensor_parallel} x pipeline "
        f"parallelism {config.layout.pipeline_parallel} (it lives in the model code): this file "
        "runs "
        f"all {ranks} model replicas data parallel with {sharded}{batch}; "
        "--emit torchtitan or --emit megatron set up the ranked layout"
    )
    return update, reason


def without_context_parallel(expressed: Expressed, engine: str) -> None:
    """Record that ``engine`` cannot split sequences: its file runs the plan's context-parallel
    ranks as data-parallel ones, each with whole sequences (a different plan, with the
    activations of the whole sequence on every device)."""
    layout = expressed.config.layout
    cp = layout.context_parallel
    if cp == 1:
        return
    expressed.change(
        f"{engine} cannot set up {layout.context_parallel_kind.value} context parallelism "
        f"{cp}: this file runs those ranks data parallel, each device holding whole "
        f"sequences; --emit megatron or --emit torchtitan set up context parallelism",
        context_parallel=1,
        data_parallel=layout.data_parallel * cp,
        grad_accumulation=max(1, expressed.config.batch.grad_accumulation // cp),
    )


def hsdp_degrees(config: TrainingConfig, nodes: int) -> tuple[int, int]:
    """(replicate, shard) data-parallel degrees of a hybrid-sharded plan.

    ``shard_group`` counts the data-parallel ranks that share one sharded copy; by default a
    node's (Zhao et al. 2023, sec. 3.2.2: shard inside a node, replicate across). Context-
    parallel ranks count as data-parallel ones here: they shard the same states.

    Raises:
        UserError: when the shard group does not divide the data-parallel degree.
    """
    ranks = config.layout.dp_cp
    shard = config.layout.shard_group or max(1, ranks // nodes)
    if shard > ranks or ranks % shard:
        raise UserError(
            f"a shard group of {shard} does not divide the {ranks} data-parallel ranks",
            "pick a shard group that divides the data-parallel degree",
        )
    return ranks // shard, shard


def require_gpu(config: TrainingConfig, engine: str, cpu: bool) -> None:
    if cpu:
        raise UserError(
            f"{engine} trains on CUDA GPUs; this plan is for a CPU",
            "use --emit torch or --emit accelerate for a CPU plan",
        )
