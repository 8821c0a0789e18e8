"""The expert all-to-alls as a schedule runs them: what compute hides of them, what the
communication kernels' SMs take from that compute, and the busiest expert rank's excess
load (the routing imbalance every rank waits for).

Overlap (:class:`advisor.config.MoeOverlap`):

- ``none``: each dispatch and combine waits for its transfer (Megatron-Core's alltoall and
  flex dispatchers without the overlap flags): all of it is exposed.
- ``a2a-overlap``: Megatron-Core's batch-level overlap (``--overlap-moe-expert-parallel-comm
  --delay-wgrad-compute``, MCore v0.14; megatron/core/transformer/moe/README.md, "EP A2A
  Overlap: overlaps All-to-All with computation by merging FWD-BWD passes of adjacent
  microbatches"): the forward of micro-batch ``i`` runs beside the backward of micro-batch
  ``i - 1`` on a second stream, so the four all-to-alls of one forward/backward pair run
  under that pair's compute. Only the steady state pairs: the first stage's warm-up
  forwards and cool-down backwards run alone. Megatron-Core's interleaved schedule (which
  the overlap needs with PP > 1) warms up with ``2 (pp - 1) + (v - 1) pp`` model-chunk
  forwards on the first stage (megatron/core/pipeline_parallel/schedules.py,
  ``forward_backward_pipelining_with_interleaving``: ``num_warmup_microbatches``), each
  ``1 / v`` of a micro-batch; without pipelining the first forward and the last backward.
  Megatron-Core requires expert parallelism, the alltoall or flex dispatcher, no full
  recomputation and virtual pipeline stages with PP > 1 (transformer_config.py
  ``__post_init__``).
- ``dualpipe``: DeepSeek-V3's DualPipe (DeepSeek-AI 2024, arXiv:2412.19437, sec. 3.2.1):
  a forward chunk and a backward chunk are paired and their attention, dispatch, MLP and
  combine interleaved, "both all-to-all and PP communication can be fully hidden"; the
  bubble is ``(PP/2 - 1)(F&B + B - 3W)`` (Table 2) instead of 1F1B's ``(PP - 1)(F + B)``;
  only the ramp of ``PP/2`` micro-batches runs unpaired.

Within a pair the communication kernels take ``s`` of the GPU's ``S`` SMs while they run
(DeepSeek-V3, sec. 3.2.2: 20 of the H800's 132 SMs; Megatron-Core ``moe_deepep_num_sms =
20``; the A2A-overlap launch recipes reserve the same 20 SMs from Transformer Engine's
kernels, ``NVTE_FWD/BWD_LAYERNORM_SM_MARGIN=20``), so a pair with transfers ``a`` and
compute ``C`` takes ``max(a, C + a s / S)``: the exposed part is ``max(a - C, a s / S)``.

Imbalance (:class:`advisor.config.MoeBalance`): an all-to-all and the expert GEMMs end when
the busiest expert-parallel rank ends. Its load over the mean is the routing's global excess
plus the sampling noise of one micro-batch:

- the global excess is Wang et al. 2024 ("Auxiliary-Loss-Free Load Balancing Strategy for
  Mixture-of-Experts", arXiv:2408.15664, Table 2): MaxVio_global of the most loaded expert
  0.04 with loss-free balancing (1B and 3B models) and 0.52 with an auxiliary loss (3B;
  0.72 at 1B). A rank holding ``m`` experts carries the hottest expert's excess spread over
  its ``m`` experts (the others at the mean): ``MaxVio / m``;
- the noise: the ``R`` token-expert rows of the expert-parallel group land on ``ep`` ranks
  multinomially; the largest of ``ep`` such counts exceeds the mean ``R / ep`` by the
  expected maximum of ``ep`` standard normals, ``z = Phi^-1((ep - 0.375) / (ep + 0.25))``
  (Blom 1958), standard deviations ``sqrt(R (1/ep)(1 - 1/ep))``; checked against sampled
  routing in tests/cost/test_expert_overlap.py.

With a capacity factor the busiest expert is capped at the capacity (``cf`` times the mean):
padded to capacity every expert runs exactly the capacity, so no rank waits for another.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import NamedTuple

from advisor.config import (
    Checkpointing,
    MoeBalance,
    MoeDispatcher,
    MoeOverlap,
    Precision,
    TrainingConfig,
)
from advisor.cost.setting import Setting
from advisor.memory.cuda_context import GPU_SMS

#: MaxVio_global of the most loaded expert (Wang et al. 2024, arXiv:2408.15664, Table 2:
#: loss-free 0.04 at 1B and 3B; auxiliary loss 0.72 at 1B, 0.52 at 3B, the larger model's).
MAX_VIOLATION: dict[MoeBalance, float] = {
    MoeBalance.LOSS_FREE: 0.04,
    MoeBalance.AUX_LOSS: 0.52,
}
#: SMs the all-to-all kernels take while they run beside compute (module docstring).
COMM_SMS = 20
#: SMs of a GPU with no entry in GPU_SMS (the H100 SXM5's 132).
_DEFAULT_SMS = 132


def overlap_problem(
    overlap: MoeOverlap,
    *,
    expert_parallel: int,
    dispatcher: MoeDispatcher,
    checkpointing: Checkpointing,
    pipeline_parallel: int,
    virtual_stages: int,
    grad_accumulation: int,
    precision: Precision | None = None,
) -> tuple[str, str] | None:
    """Why the named schedule cannot run this layout (what is wrong, a hint), or None.

    ``a2a-overlap``: Megatron-Core's ``TransformerConfig.__post_init__`` asserts expert
    parallelism, the alltoall or flex dispatcher, no full recomputation and no
    recomputation method or layer count (so none of torchtitan's per-op or every-n-th-block
    policies, which Megatron can only run as full recomputation), a bf16 or fp16 model
    (not fp32 weights: no fp32/tf32 or autocast plan; ``precision`` None skips the test),
    and virtual pipeline stages when PP > 1. ``dualpipe``: DeepSeek-V3's DualPipe (arXiv:2412.19437,
    sec. 3.2.1) "only requires that the pipeline stages and micro-batches be divisible by 2";
    it runs its own two-direction schedule of one chunk per direction (no interleaved
    virtual stages). Both hide expert-parallel all-to-alls: they need EP > 1.
    """
    if overlap is MoeOverlap.NONE:
        return None
    flag = f"--moe-overlap {overlap.value}"
    if expert_parallel < 2:
        return (
            f"{flag} hides expert-parallel all-to-alls, but --expert-parallel is 1",
            "give --expert-parallel 2 or more, or drop --moe-overlap",
        )
    if overlap is MoeOverlap.A2A_OVERLAP:
        if dispatcher is MoeDispatcher.ALLGATHER:
            return (
                f"{flag} runs with the alltoall or flex dispatcher only (Megatron-Core)",
                "use --moe-dispatcher alltoall or flex",
            )
        if checkpointing is Checkpointing.FULL:
            return (
                f"{flag} cannot run with full recomputation (Megatron-Core)",
                "use --checkpointing selective or none",
            )
        if checkpointing in (Checkpointing.SELECTIVE_OP, Checkpointing.SELECTIVE_LAYER):
            return (
                f"{flag} runs with Megatron-Core's selective recomputation or none, not "
                f"{checkpointing.value} (Megatron runs it as full recomputation)",
                "use --checkpointing selective or none",
            )
        if precision is not None and precision not in _SIXTEEN_BIT_MODELS:
            return (
                f"{flag} needs a bf16 or fp16 model (Megatron-Core), not {precision.value}",
                "use --precision bf16-mixed, fp16-mixed or fp8-mixed",
            )
        if pipeline_parallel > 1 and virtual_stages < 2:
            return (
                f"{flag} with pipeline parallelism needs virtual stages (Megatron-Core)",
                "give --virtual-stages 2 or more",
            )
        return None
    if pipeline_parallel < 2 or pipeline_parallel % 2 or grad_accumulation % 2:
        return (
            f"{flag} needs an even number of pipeline stages (2 or more) and of "
            f"micro-batches, got {pipeline_parallel} and {grad_accumulation}",
            "give an even --pipeline-parallel and --grad-accumulation",
        )
    if virtual_stages > 1:
        return (
            f"{flag} runs one model chunk per direction (DeepSeek-V3's two-direction "
            "schedule), not interleaved virtual stages",
            "drop --virtual-stages",
        )
    return None


def config_overlap_problem(config: TrainingConfig) -> tuple[str, str] | None:
    """:func:`overlap_problem` of a configuration's own overlap."""
    p = config.layout
    return overlap_problem(
        p.moe_overlap,
        expert_parallel=p.expert_parallel,
        dispatcher=p.moe_dispatcher,
        checkpointing=config.savers.checkpointing,
        pipeline_parallel=p.pipeline_parallel,
        virtual_stages=p.virtual_stages,
        grad_accumulation=config.batch.grad_accumulation,
        precision=config.precision,
    )


#: Precisions whose model Megatron-Core holds in bf16 or fp16 (``--bf16``/``--fp16``, the
#: FP8 and block-scaled recipes on top of bf16 weights): what its A2A overlap asserts.
_SIXTEEN_BIT_MODELS = frozenset(
    {
        Precision.BF16_MIXED,
        Precision.FP16_MIXED,
        Precision.FP8_MIXED,
        Precision.MXFP8_MIXED,
        Precision.NVFP4_MIXED,
        Precision.BF16,
        Precision.FP16,
    }
)


def straggler_factor(
    *,
    experts: int,
    ep: int,
    rows: float,
    balance: MoeBalance,
    capacity_factor: float | None,
    pad_to_capacity: bool,
) -> float:
    """The busiest expert-parallel rank's routed rows over the mean rank's.

    Args:
        experts: routed experts per layer.
        ep: expert-parallel degree.
        rows: token-expert rows the expert-parallel group routes in one micro-batch.
        balance: the router's load balancing.
        capacity_factor: the expert capacity factor (None: dropless).
        pad_to_capacity: every expert padded to its capacity.

    Returns:
        A factor >= 1 (1 without expert parallelism or when padded to capacity).
    """
    if ep <= 1 or experts <= 1:
        return 1.0
    if capacity_factor is not None and pad_to_capacity:
        return 1.0
    local = max(1, experts // ep)
    excess = MAX_VIOLATION[balance] / local
    if rows > 0:
        z = NormalDist().inv_cdf((ep - 0.375) / (ep + 0.25))
        noise = z * math.sqrt((1 - 1 / ep) * ep / rows)
        excess += noise
    factor = 1.0 + excess
    if capacity_factor is not None:
        # Rows beyond capacity are dropped: the busiest expert runs at most the capacity;
        # the mean is already min(cf, 1) (advisor.memory.moe.capacity_scale).
        factor = min(factor, capacity_factor) / min(capacity_factor, 1.0)
    return max(factor, 1.0)


def rank_straggler(s: Setting) -> float:
    """:func:`straggler_factor` of one prediction: the expert-parallel group routes
    ``ep x tokens / tp`` tokens (each rank its sequence-parallel share) ``top_k`` times."""
    if s.spec.num_experts <= 1 or s.ep <= 1:
        return 1.0
    rows = s.tokens / s.tp * s.spec.experts_per_token * s.ep * s.mb.expert_rows
    return straggler_factor(
        experts=s.spec.num_experts,
        ep=s.ep,
        rows=rows,
        balance=s.mb.moe_balance,
        capacity_factor=s.mb.capacity_factor,
        pad_to_capacity=s.mb.pad_to_capacity,
    )


def imbalance_detail(s: Setting) -> str:
    """Where the busiest rank's excess comes from, for a component's detail."""
    mb = s.mb
    vio = MAX_VIOLATION[mb.moe_balance]
    local = max(1, s.spec.num_experts // max(s.ep, 1))
    text = f"{mb.moe_balance.value} routing MaxVio {vio:.2f} over {local} expert(s) per rank"
    text += " + multinomial batch noise"
    if mb.capacity_factor is not None:
        text += f", capped at capacity factor {mb.capacity_factor:g}"
    return text


def comm_sm_share(hardware_id: str | None) -> float:
    """Share of the GPU's SMs the all-to-all kernels take while they overlap compute."""
    gpu = GPU_SMS.get(hardware_id or "")
    sms = gpu.sms if gpu is not None else _DEFAULT_SMS
    return min(COMM_SMS / sms, 1.0)


class Exposed(NamedTuple):
    """The step's exposed all-to-all seconds, what of it is the SM share's slowdown of the
    compute it ran under, and the micro-batches that ran unpaired."""

    seconds: float
    sm_tax: float
    unpaired: float


def unpaired_micro_batches(overlap: MoeOverlap, accumulation: int, pp: int, v: int = 1) -> float:
    """Micro-batches of the busiest stage whose all-to-alls no other micro-batch's compute
    hides (module docstring): all under ``none``, the warm-up/cool-down ramp otherwise."""
    A = accumulation
    if overlap is MoeOverlap.NONE:
        return float(A)
    if overlap is MoeOverlap.DUALPIPE:
        ramp = pp / 2
    elif pp > 1:
        ramp = (2 * (pp - 1) + (v - 1) * pp) / v
    else:
        ramp = 1.0
    return float(min(A, max(1.0, ramp)))


def exposed_all_to_all(
    overlap: MoeOverlap,
    *,
    a2a: float,
    compute: float,
    accumulation: int,
    pp: int,
    sm_share: float,
    v: int = 1,
) -> Exposed:
    """Exposed all-to-all seconds of one step on the busiest stage.

    Args:
        overlap: what hides the all-to-alls.
        a2a: one micro-batch's all-to-all seconds on the stage (forward and backward).
        compute: one micro-batch's compute seconds on the stage (forward and backward):
            what a paired micro-batch runs beside them.
        accumulation: micro-batches per step.
        pp: pipeline stages.
        v: virtual stages (model chunks) per pipeline rank.
        sm_share: share of the SMs the communication kernels take
            (:func:`comm_sm_share`).

    Returns:
        The step's exposed seconds, the SM share's part of them, the unpaired count.
    """
    A = accumulation
    unpaired = unpaired_micro_batches(overlap, A, pp, v)
    paired = A - unpaired
    if paired <= 0 or a2a <= 0:
        return Exposed(a2a * A, 0.0, unpaired)
    per_pair = max(a2a - compute, a2a * sm_share)
    tax = a2a * sm_share if a2a - compute < a2a * sm_share else 0.0
    return Exposed(paired * per_pair + unpaired * a2a, paired * tax, unpaired)


def dualpipe_bubble(pp: int, fwd: float, bwd: float, wgrad: float, pair: float) -> float:
    """DualPipe's bubble (DeepSeek-V3 report, Table 2): ``(PP/2 - 1)(F&B + B - 3W)`` with
    ``F&B`` the time of an overlapped forward-backward chunk pair, ``B`` a backward, ``W``
    its weight-gradient part; never below zero."""
    return max(pp / 2 - 1, 0.0) * max(pair + bwd - 3 * wgrad, 0.0)
