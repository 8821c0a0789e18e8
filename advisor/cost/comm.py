"""Communication: the links' achievable bus bandwidth, and the exposed collectives of each
parallelism: tensor-parallel all-gathers and reduce-scatters, expert-parallel all-to-alls,
pipeline sends, and the data-parallel all-reduces and parameter gathers (DDP, ZeRO, FSDP,
HSDP); measured NCCL/gloo bandwidth where the calibration has it."""

from __future__ import annotations

from advisor.config import Checkpointing, Sharding, Task, TrainingConfig
from advisor.cost.expert_overlap import rank_straggler
from advisor.cost.moe import dispatch_volumes
from advisor.cost.result import ComponentTime, Source
from advisor.cost.setting import Setting, grad_bytes, shard_group, trainable, weight_bytes
from advisor.hardware.profiles import DeviceKind


def link(
    s: Setting, crosses_nodes: bool, *, data_parallel: bool = False, per_node: int = 1
) -> tuple[float, str]:
    """Achievable bus bandwidth (bytes/s) of a collective's ring and the link's name.

    Inside a node: the NVLink (or PCIe) one-way rate x the NCCL bus-bandwidth share.
    Across nodes a ring enters each node once per channel, one channel per NIC, so the
    ``per_node`` members of the group that share a node share their NICs: bus bandwidth
    = min(intra-node, per_node x per-GPU NIC x share) (nccl-tests PERFORMANCE.md).
    """
    hw = s.hw
    intra = hw.intra_node if hw is not None else None
    inter = hw.inter_node if hw is not None else None
    intra_bidir = (intra.bandwidth_gb_s if intra else None) or s.link_override or 25.0
    intra_bw = intra_bidir / 2 * s.eff.comm_intra.value * 1e9
    if not crosses_nodes:
        return intra_bw, intra.name if intra else "PCIe/host link"
    nic = (s.link_override if data_parallel else None) or (
        inter.bandwidth_gb_s if inter else intra_bidir
    )
    nic_bw = nic / 2 * s.eff.comm_inter.value * 1e9
    name = inter.name if inter else "inter-node link"
    return min(intra_bw, max(1, per_node) * nic_bw), name


def measured_busbw(s: Setting, op: str, ranks: int) -> float | None:
    """A local NCCL measurement for a single-node group, in bytes/s."""
    if s.cal is None or not s.cal.collectives or ranks > s.cal.collective_ranks:
        return None
    value = s.cal.collectives.get(op)
    return value * 1e9 if value else None


# NCCL all-reduce latency (the alpha of t = alpha + bus bytes / bus bandwidth) per ring size,
# fitted by benchmarks/nccl_fit.py to nccl-tests all_reduce_perf on 2, 4 and 8 A100 SXM GPUs of
# one node, 1 MiB to 1 GiB (benchmarks/data/nccl_allreduce_a100.yaml, from vTrain's
# repository): median |error| 2-3% per size. Between and beyond the measured sizes, linear
# in the ranks (a ring's latency grows with its hops). Carried to other GPUs as measured.
RING_LATENCY_S = {2: 39.9e-6, 4: 45.8e-6, 8: 72.2e-6}


def ring_latency(n: int) -> float:
    """Seconds one all-reduce over ``n`` ranks costs besides its bytes (RING_LATENCY_S)."""
    if n <= 1:
        return 0.0
    sizes = sorted(RING_LATENCY_S)
    lo = max((k for k in sizes if k <= n), default=sizes[0])
    hi = min((k for k in sizes if k > lo), default=lo)
    if hi == lo:  # beyond the table: the last segment's slope
        lo, hi = sizes[-2], sizes[-1]
    a, b = RING_LATENCY_S[lo], RING_LATENCY_S[hi]
    return max(a + (b - a) * (n - lo) / (hi - lo), 0.0)


# --- per micro-batch ----------------------------------------------------------------------


def tp_comm(s: Setting) -> float:
    """Exposed tensor-parallel collectives of one block, one micro-batch.

    With sequence parallelism each block does 2 all-gathers and 2 reduce-scatters of a
    (tokens x h) activation forward and the same backward (Korthikanti et al. 2022,
    sec. 4.2.2); a full recompute repeats the forward's. Under FP8 the forward
    all-gathers carry the FP8-cast GEMM input (1 byte per element; torchao's
    Float8ColwiseParallel, Transformer Engine's sequence-parallel FP8 all-gather);
    reduce-scatters sum 16-bit outputs and gradients.

    Overlapped TP (:func:`tp_hidden_share`) splits each collective into ``t`` per-rank
    chunks pipelined with the partial GEMMs that consume or produce them (Wang et al.
    2023, "Overlap Communication with Dependent Computation via Decomposition";
    torchtitan async TP; Transformer Engine userbuffers): the profile's fitted
    ``tp_overlap`` share is hidden, never more than the ``(t - 1) / t`` chunks that have
    a partial GEMM to run under.
    """
    if s.tp == 1:
        return 0.0
    act = 4 if s.dtype in ("fp32", "tf32") else 2
    per = s.tokens * s.sh.hidden * act * (s.tp - 1) / s.tp
    full = s.mb.checkpointing is Checkpointing.FULL
    count = 8.0 + (4 if full else 0)
    if s.fp8 and s.eff.gemm_fp8 is not None:
        count -= (2 + (2 if full else 0)) / 2
    # A TP group wider than a node enters each node through the NICs of its members there
    # (one ring channel per NIC): min(NVLink, members per node x NIC), as for data parallelism.
    bw = (
        measured_busbw(s, "all_gather", s.tp)
        or link(s, s.tp > s.node, per_node=min(s.tp, s.node))[0]
    )
    # Each all-gather or reduce-scatter is half an all-reduce: half its latency too
    # (RING_LATENCY_S), which small micro-batches feel (1-16 MiB messages reach 10-55% of
    # the large-message bus bandwidth in nccl-tests).
    seconds = count * (per / bw + ring_latency(s.tp) / 2)
    hidden = tp_hidden_share(s)
    return seconds * (1.0 - hidden)


def tp_hidden_share(s: Setting) -> float:
    """Share of the TP collectives hidden under the dependent GEMMs (0 when not
    overlapped or where no share is fitted for the generation)."""
    if s.tp == 1 or not s.mb.tp_overlapped or s.eff.tp_overlap is None:
        return 0.0
    return min(s.eff.tp_overlap.value, (s.tp - 1) / s.tp)


# Expert-parallel all-to-alls at the bandwidth DeepEP's normal (training) kernels reach
# (github.com/deepseek-ai/DeepEP, docs/legacy.md: H800, CX7 400 Gb/s, 4096 tokens, hidden
# 7168, top-8, FP8 dispatch, BF16 combine): inside a node 153 GB/s dispatch and 158 GB/s
# combine of the ~160 GB/s one-way NVLink (0.96); across nodes 43 GB/s per GPU at EP16 of
# its 50 GB/s NIC (0.86; the EP32/EP64 figures, 58 and 51 GB/s, exceed the NIC because
# DeepEP sends a token once per node and forwards it over NVLink, which is not priced here).
A2A_NVLINK_SHARE = 0.96
A2A_NIC_SHARE = 0.86
# DeepEP/DeepSeek-V3 dispatch FP8 activations (1 byte + a 4-byte scale per 128 elements)
# and combine in BF16 (DeepEP README; DeepSeek-V3 report, sec. 3.3).
_FP8_DISPATCH_BYTES = 1 + 4 / 128


def ep_comm(s: Setting) -> float:
    """Exposed token dispatch of one MoE block, one micro-batch: dispatch and combine,
    forward and backward (Lepikhin et al. 2021; Fedus et al. 2022).

    The volumes are the configured dispatcher's (:func:`advisor.cost.moe.dispatch_volumes`:
    all-to-all, all-gather or DeepEP's one copy per destination rank). The expert-parallel
    exchange sends each remote row either over NVLink (EP ranks on this node: Megatron's
    expert rank order puts ``etp`` then ``ep`` innermost) or over the NIC at the same time,
    so each transfer takes the longer of the two, at DeepEP's measured shares of the links;
    under FP8 the forward dispatch carries FP8 activations. The expert tensor group's
    all-gather and reduce-scatter, and the all-gather dispatcher's ring collectives, run at
    the link's ring bandwidth. No overlap with expert compute is priced.
    """
    if s.spec.num_experts <= 1 or s.ep * s.etp <= 1:
        return 0.0
    act = 4 if s.dtype in ("fp32", "tf32") else 2
    volumes = dispatch_volumes(
        s.mb.moe_dispatcher,
        tokens=s.tokens,
        hidden=s.sh.hidden,
        experts=s.spec.num_experts,
        top_k=s.spec.experts_per_token,
        tp=s.tp,
        cp=1,  # s.tokens is already the context-parallel rank's share (seq / cp)
        etp=s.etp,
        ep=s.ep,
        act_bytes=act,
        capacity_scale=s.mb.expert_rows,
    )
    if s.hw is None or s.hw.kind is DeviceKind.CPU:
        bw, _ = link(s, s.ep * s.etp > s.node)
        return 2 * sum(volumes.values()) / bw
    seconds = 0.0
    etp_volume = volumes.get("expert_tp_all_gather", 0.0)
    etp_volume += volumes.get("expert_tp_reduce_scatter", 0.0)
    if etp_volume:
        seconds += 2 * etp_volume / link(s, s.etp > s.node)[0]
    gathered = volumes.get("allgather_dispatch", 0.0) + volumes.get("reduce_scatter_combine", 0.0)
    if gathered:
        seconds += 2 * gathered / link(s, s.ep * s.etp > s.node)[0]
    exchanged = volumes.get("all_to_all_dispatch", 0.0)
    if exchanged and s.ep > 1:
        local = max(1, min(s.ep, s.node // max(s.etp, 1)))
        intra = s.hw.intra_node
        inter = s.hw.inter_node
        nvlink = (intra.bandwidth_gb_s if intra else None) or s.link_override or 25.0
        nic = inter.bandwidth_gb_s if inter else nvlink
        nvlink_bw = nvlink / 2 * A2A_NVLINK_SHARE * 1e9
        nic_bw = nic / 2 * A2A_NIC_SHARE * 1e9
        near, far = (local - 1) / (s.ep - 1), (s.ep - local) / (s.ep - 1)
        fp8 = _FP8_DISPATCH_BYTES / act if s.fp8 else 1.0
        # Forward dispatch and combine; backward sends the combine's and the dispatch's
        # gradients the other way.
        for scale in (fp8, 1.0, 1.0, 1.0):
            v = exchanged * scale
            seconds += max(v * near / nvlink_bw, v * far / nic_bw)
    return seconds


def parallel_terms(s: Setting, parts: dict[str, ComponentTime]) -> None:
    """Add one micro-batch's exposed TP, EP and pipeline transfers on one stage to ``parts``."""
    L = s.stage_layers
    tp_s = tp_comm(s) * L
    if tp_s:
        parts["tensor_parallel_comm"] = ComponentTime(
            seconds=tp_s,
            source=Source.ANALYTIC,
            detail=f"TP={s.tp} sequence-parallel all-gather/reduce-scatter, "
            + (
                f"{tp_hidden_share(s):.0%} hidden (overlapped TP)"
                if tp_hidden_share(s)
                else "exposed"
            ),
        )
    # The all-to-all ends when the busiest expert rank has received its rows.
    straggler = rank_straggler(s)
    ep_s = ep_comm(s) * L * straggler
    if ep_s:
        parts["expert_all_to_all"] = ComponentTime(
            seconds=ep_s,
            source=Source.ANALYTIC,
            detail=f"EP={s.ep}"
            + (f" ETP={s.etp}" if s.etp != s.tp else "")
            + f", {s.mb.moe_dispatcher.value} dispatcher"
            + (f", busiest rank +{straggler - 1:.1%}" if straggler > 1 else ""),
        )
    if s.pp > 1:
        act = 4 if s.dtype in ("fp32", "tf32") else 2
        # Activations forward and their gradients backward between neighbouring stages,
        # v times with interleaving; Megatron's scatter/gather sends 1/t per TP rank
        # (Narayanan et al. 2021, sec. 4.1).
        bytes_ = 2 * s.v * s.tokens * s.sh.hidden * act / s.tp
        bw_p2p, _ = link(s, s.tp * s.dp_cp >= s.node)
        parts["pipeline_p2p"] = ComponentTime(
            seconds=bytes_ / bw_p2p, source=Source.ANALYTIC, detail="1F1B send/recv"
        )


# --- per step -----------------------------------------------------------------------------


def data_parallel(s: Setting, c: TrainingConfig, fwd: float, bwd: float) -> ComponentTime:
    """Exposed data-parallel collectives: what forward/backward compute does not hide.

    FSDP/ZeRO-3 all-gather the parameters before forward and again before backward and
    reduce-scatter the gradients every micro-step, prefetching one layer ahead
    (Rajbhandari et al. 2020; Zhao et al. 2023); HSDP does that inside a shard group and
    all-reduces the gradient shards across groups once per step. DDP and ZeRO-1
    all-reduce gradients once per step in buckets during the last backward; ZeRO-2
    reduce-scatters every micro-step; ZeRO-1/2 all-gather the updated parameters after
    the step. Ring collectives move (n-1)/n of the data over each rank's link at the NCCL
    bus bandwidth (nccl-tests PERFORMANCE.md). Under pipeline parallelism FSDP/HSDP
    gather the parameters once and reduce the gradients once per step:
    torch.distributed.pipelining turns gradient sync and resharding off for every
    micro-batch's backward but the last (stage.py ``backward_maybe_with_nosync``), and
    torchtitan does not reshard after forward with PP (the memory model keeps those
    parameters gathered and gradients unsharded).
    """
    layout = c.layout
    A = c.batch.grad_accumulation
    # One gather and one reduction per step (see above).
    pipelined = s.pp > 1 and layout.sharding in (Sharding.FSDP, Sharding.HSDP)
    if pipelined:
        A = 1
    wb, gb = weight_bytes(c.precision), grad_bytes(c.precision)
    params = s.sh.params / (s.tp * s.pp)
    grads = trainable(s, c) / (s.tp * s.pp) * gb
    params, grads = _expert_dp_share(s, c, params, grads)
    stage = layout.sharding.zero_stage
    # Context-parallel ranks reduce their gradients with the data-parallel ones (each holds
    # a share of the same samples' gradient): Megatron-Core's data-parallel group "with
    # context parallel"; torchtitan's FSDP over the dp_shard_cp mesh.
    n = shard_group(s, c) if layout.sharding is Sharding.HSDP else s.dp_cp
    if s.hw is None and s.cal is not None and s.cal.allreduce_gb_s:
        # CPU calibration: gloo all-reduce bus bandwidth, no overlap.
        share = (n - 1) / n
        volume = 2 * share * grads * (A if stage == 3 else 1)
        if stage == 3:
            volume += 2 * share * params * wb * A
        return ComponentTime(
            seconds=volume / (s.cal.allreduce_gb_s * 1e9),
            source=Source.MEASURED,
            detail="ring collectives at the measured gloo bus bandwidth",
        )
    bw, name, measured = _dp_link(s, c, n)
    exposed, detail = _dp_exposed(
        s, c, n, A, pipelined, params=params, grads=grads, bw=bw, name=name, fwd=fwd, bwd=bwd
    )
    src = Source.MEASURED if measured else Source.ANALYTIC
    return ComponentTime(seconds=exposed, source=src, detail=detail + ", exposed")


def _expert_dp_share(
    s: Setting, c: TrainingConfig, params: float, grads: float
) -> tuple[float, float]:
    """The parameters and gradients of one rank that its data-parallel collectives move,
    with the routed experts as Megatron-Core and DeepSpeed-MoE reduce them: a rank holds
    ``1 / (ep x etp)`` of the experts (not ``1 / tp``) and reduces their gradients over the
    expert-data-parallel group only (megatron/core/parallel_state.py
    ``_EXPERT_DATA_PARALLEL_GROUP``; DeepSpeed-MoE's expert-data-parallel groups), not over
    all data-parallel ranks. Returned as the dense-equivalent volume over the ``dp`` ranks
    the callers price, each part scaled by its own ring share ``(n - 1) / n``."""
    layout = c.layout
    if (
        s.spec.num_experts <= 1
        or c.task not in (Task.PRETRAIN, Task.FINETUNE)
        or layout.sharding is Sharding.HSDP
        or (layout.expert_parallel == 1 and s.etp == s.tp)
    ):
        return params, grads
    routed = s.spec.moe_layer_count() * s.spec.num_experts * s.spec.expert_parameter_count()
    held = routed / (layout.expert_parallel * s.etp * s.pp)
    counted = routed / (s.tp * s.pp)
    dp, edp = s.dp, layout.expert_data_parallel
    share = (dp - 1) / dp if dp > 1 else 1.0
    scale = ((edp - 1) / edp) / share if dp > 1 else 0.0
    dense_params = params - counted
    gb = grad_bytes(c.precision)
    return (
        dense_params + held * scale,
        (dense_params + held * scale) * gb,
    )


def _dp_link(s: Setting, c: TrainingConfig, n: int) -> tuple[float, str, bool]:
    """The data-parallel group's bus bandwidth, its link's name, and whether it was measured."""
    intra = s.hw.intra_node if s.hw is not None else None
    slower = (
        c.layout.sharding is not Sharding.HSDP
        and s.link_override is not None
        and intra is not None
        and s.link_override < intra.bandwidth_gb_s
    )
    crosses = s.tp * n > s.node or slower
    measured = measured_busbw(s, "all_gather", n) if not crosses else None
    per_node = min(n, max(1, s.node // s.tp))
    if measured:
        return measured, "measured NCCL", True
    bw, name = link(s, crosses, data_parallel=True, per_node=per_node)
    return bw, name, False


def _dp_exposed(
    s: Setting,
    c: TrainingConfig,
    n: int,
    A: int,
    pipelined: bool,
    *,
    params: float,
    grads: float,
    bw: float,
    name: str,
    fwd: float,
    bwd: float,
) -> tuple[float, str]:
    """Exposed seconds of the data-parallel collectives over ``n`` ranks, and what they are."""
    layout = c.layout
    eta = s.eff.overlap.value
    L = max(s.stage_layers, 1.0)
    wb = weight_bytes(c.precision)
    stage = layout.sharding.zero_stage
    share = (n - 1) / n
    if stage == 3:
        ag = share * params * wb / bw
        rs = share * grads / bw
        exp_f = max(ag / L, ag - eta * fwd)
        regather = 0.0 if pipelined else ag  # no reshard after forward under PP
        exp_b = max((regather + rs) / L, regather + rs - eta * bwd)
        exposed = (exp_f + exp_b) * A
        detail = f"FSDP/ZeRO-3 over {n} ranks ({name})"
        if layout.sharding is Sharding.HSDP and s.dp_cp > n:
            r = s.dp_cp // n
            bw_x, name_x = link(s, True, data_parallel=True)
            ar = 2 * (r - 1) / r * grads / n / bw_x
            exposed += max(ar / L, ar - eta * bwd)
            detail += f" + all-reduce over {r} replicas ({name_x})"
        return exposed, detail
    if stage == 2:
        rs = share * grads / bw
        exposed = max(rs / L, rs - eta * bwd) * A
    else:
        ar = 2 * share * grads / bw
        exposed = max(ar / L, ar - eta * bwd)
    if stage in (1, 2):
        # The updated parameters gathered after the step (the rank's own, experts included
        # as _expert_dp_share counts them).
        exposed += share * grads / grad_bytes(c.precision) * wb / bw
    return exposed, f"{'DDP' if stage == 0 else f'ZeRO-{stage}'} over {n} ranks ({name})"
