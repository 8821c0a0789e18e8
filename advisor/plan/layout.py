"""One parallel layout on a topology: the configuration's degrees (:class:`advisor.config.
ParallelLayout`: data x tensor x pipeline, interleaving, experts, sharding), validated against
the world of devices where it is built.

Modelled on torchtitan's ParallelDims: the degrees multiply to the world size and tensor
parallelism stays inside an NVLink domain (its all-reduces run per layer, at NVLink speed;
Shoeybi et al. 2019; Narayanan et al. 2021, takeaway 1): a node, or the 72 GPUs of an NVL72
rack across its 4-GPU trays. Nothing downstream re-checks them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from advisor.config import (
    Checkpointing,
    ContextParallelKind,
    MoeBalance,
    MoeDispatcher,
    MoeOverlap,
    ParallelLayout,
    Sharding,
    TrainingConfig,
)
from advisor.cost.expert_overlap import overlap_problem
from advisor.errors import UserError
from advisor.memory.moe import expert_fold_problem
from advisor.model.spec import ModelSpec


class Layout(BaseModel):
    """How a world of devices splits the model and the batch: the configuration's parallel
    degrees and sharding (``parallel``), checked against the world and its NVLink domains."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    world_size: int = Field(ge=1)
    gpus_per_node: int = Field(ge=1)
    parallel: ParallelLayout = Field(
        default_factory=ParallelLayout,
        description="the degrees and sharding, as a configuration holds them",
    )
    nvlink_domain: int | None = Field(
        default=None,
        ge=1,
        description="GPUs joined by NVLink across nodes (an NVL72 rack); None: the node",
    )

    @model_validator(mode="after")
    def _check(self) -> Layout:
        p = self.parallel
        dp, tp, pp, cp = (
            p.data_parallel,
            p.tensor_parallel,
            p.pipeline_parallel,
            p.context_parallel,
        )
        if p.world_size != self.world_size:
            raise ValueError(
                f"dp {dp} x tp {tp} x pp {pp} x cp {cp} != world size {self.world_size}"
            )
        fast = self.fast_group
        if tp > fast or fast % tp:
            raise ValueError(f"tp {tp} must divide the {fast} GPUs of an NVLink domain")
        if p.virtual_stages > 1 and pp == 1:
            raise ValueError("interleaved stages need pipeline parallelism")
        problem = expert_fold_problem(p)
        if problem:
            raise ValueError(problem[0])
        if p.dp_cp == 1 and p.sharding is not Sharding.NONE:
            raise ValueError("sharding needs more than one data-parallel replica")
        if p.sharding is Sharding.HSDP:
            g, n = p.shard_group, p.dp_cp
            if g is None or g < 2 or n % g or g == n:
                raise ValueError("hsdp needs a shard group that divides dp and is smaller")
        elif p.shard_group is not None:
            raise ValueError("shard_group belongs to hsdp")
        return self

    def with_sharding(self, sharding: Sharding) -> Layout:
        """This layout with another sharding (no shard group), validated."""
        return Layout(
            world_size=self.world_size,
            gpus_per_node=self.gpus_per_node,
            parallel=self.parallel.updated(sharding=sharding, shard_group=None),
            nvlink_domain=self.nvlink_domain,
        )

    @property
    def fast_group(self) -> int:
        """GPUs a tensor-parallel group may span at NVLink speed: the NVLink domain (the node
        where none spans nodes), or the whole world when it fits in one."""
        domain = self.nvlink_domain or self.gpus_per_node
        return self.world_size if self.world_size <= domain else domain

    @property
    def label(self) -> str:
        """A short name: ``dp8 fsdp``, ``tp8 pp16 dp1``..."""
        p = self.parallel
        parts = []
        if p.tensor_parallel > 1:
            parts.append(f"tp{p.tensor_parallel}")
        if p.pipeline_parallel > 1:
            vp = p.virtual_stages
            parts.append(f"pp{p.pipeline_parallel}" + (f"x{vp}" if vp > 1 else ""))
        if p.context_parallel > 1:
            kind = "" if p.context_parallel_kind is ContextParallelKind.RING else " ulysses"
            parts.append(f"cp{p.context_parallel}{kind}")
        if p.expert_parallel > 1:
            parts.append(f"ep{p.expert_parallel}")
            if p.expert_tp != p.tensor_parallel:
                parts.append(f"etp{p.expert_tp}")
        parts.append(f"dp{p.data_parallel}")
        if p.sharding is not Sharding.NONE:
            parts.append(p.sharding.value)
        return " ".join(parts)

    def apply(self, config: TrainingConfig) -> TrainingConfig:
        """The configuration with this layout's degrees and sharding."""
        return config.replace(layout=self.parallel)


def _powers_of_two(limit: int) -> list[int]:
    out, v = [], 1
    while v <= limit:
        out.append(v)
        v *= 2
    return out


def enumerate_layouts(
    spec: ModelSpec,
    *,
    world_size: int,
    gpus_per_node: int,
    tp: int | None = None,
    pp: int | None = None,
    nvlink_domain: int | None = None,
    seq_len: int = 0,
    cp: int | None = None,
    cp_kind: ContextParallelKind | None = None,
    ep: int | None = None,
    etp: int | None = None,
) -> list[Layout]:
    """Every layout worth planning on ``world_size`` devices.

    Tensor parallel: powers of two within an NVLink domain (a node, or an NVL72 rack's 72
    GPUs) that divide the attention heads (and the key/value heads, as Megatron-LM requires);
    across domains its per-layer collectives would run at the inter-node link, which only
    ``estimate --tensor-parallel`` prices. Pipeline: powers of two up to the layer count
    (uneven last stages are allowed, as Llama 3 405B's 126 layers on 16 stages; Dubey et al.
    2024, sec. 3.3.2), interleaved two ways where the layers split into whole chunks.
    Sharding: DDP, ZeRO-1/2/3, FSDP, and HSDP across nodes; with pipeline stages only what
    the pipeline engines combine with them (Megatron's distributed optimizer = ZeRO-1,
    torchtitan's FSDP/HSDP + PP). MoE: Megatron-Core's parallel folding re-factors the tensor
    x data parallel ranks of a stage into expert tensor x expert x expert-data parallel
    (megatron/core/parallel_state.py): expert tensor parallelism equal to TP (Megatron's
    default) or 1 (the README's advice: EP over TP for the experts): for each the largest
    power-of-two expert degree that divides the experts, folds and keeps the expert group
    in one NVLink domain (its all-to-alls run every layer), and with ETP 1 the largest that
    folds at all (DeepSeek-V3's EP 64 across nodes); with the dispatcher whose volume is the
    smaller (:func:`choose_dispatcher`).
    Context parallel (:func:`context_degrees`): for sequences of at least
    :data:`CP_MIN_SEQ` tokens, powers of two that leave each rank at least
    :data:`CP_MIN_RANK_TOKENS` tokens, ring attention and (where the heads split) Ulysses;
    shorter sequences keep one rank per sequence, so their search is what it was.

    Args:
        spec: the model (heads, layers, experts).
        world_size: devices in all.
        gpus_per_node: devices per node.
        nvlink_domain: devices one NVLink domain joins across nodes (None: the node);
            tensor parallelism stays inside one.
        tp: pin the tensor-parallel degree (``--tp``).
        pp: pin the pipeline degree (``--pp``).
        seq_len: tokens per sample (decides the context-parallel degrees explored).
        cp: pin the context-parallel degree (``--context-parallel``).
        cp_kind: pin ring attention or Ulysses (``--context-parallel-kind``).
        ep: pin the expert-parallel degree (``--expert-parallel``).
        etp: pin the expert tensor-parallel degree (``--expert-tensor-parallel``).

    Returns:
        The layouts, each validated.

    Raises:
        UserError: when a pinned degree cannot be built.
    """
    node = max(gpus_per_node, 1)
    probe = Layout(
        world_size=world_size,
        gpus_per_node=node,
        parallel=ParallelLayout(data_parallel=world_size),
        nvlink_domain=nvlink_domain,
    )
    fast = probe.fast_group
    heads = spec.num_attention_heads or 1
    kv = spec.num_key_value_heads or heads
    layers = spec.num_layers or 1
    if tp is not None:
        if tp > fast or fast % tp:
            raise UserError(
                f"--tp {tp} does not fit in an NVLink domain of {fast} GPUs",
                "tensor parallelism runs inside one NVLink domain (a node, or an NVL72 rack);"
                " pick a degree that divides it (across domains, `optadvise estimate"
                " --tensor-parallel` prices it at the inter-node link)",
            )
        if heads % tp:
            raise UserError(
                f"--tp {tp} does not divide {spec.name}'s {heads} attention heads",
                "pick a tensor-parallel degree that divides the heads",
            )
    if pp is not None and (world_size % pp or pp > layers):
        raise UserError(
            f"--pp {pp} does not divide the {world_size} devices or exceeds {layers} layers",
            "pick a pipeline degree that divides the world size",
        )
    if cp is not None and world_size % cp:
        raise UserError(
            f"--context-parallel {cp} does not divide the {world_size} devices",
            "pick a context-parallel degree that divides the world size",
        )
    tps = (
        [tp]
        if tp
        else [t for t in _powers_of_two(fast) if fast % t == 0 and heads % t == 0 and kv % t == 0]
    )
    out: list[Layout] = []
    for t in tps:
        if world_size % t:
            continue
        for c, kind in context_degrees(spec, seq_len, world_size // t, t, cp, cp_kind):
            rest = world_size // (t * c)
            pps = [pp] if pp else [p for p in _powers_of_two(min(rest, layers)) if rest % p == 0]
            for p in pps:
                if rest % p:
                    continue
                dp = rest // p
                # Interleaving needs whole layers per model chunk (Megatron-LM's check).
                vps = [1] + ([2] if p > 1 and layers % (2 * p) == 0 else [])
                # The experts fold over the stage's tensor x context x data ranks.
                experts = _expert_layouts(spec, t, dp * c, fast, ep, etp)
                for v in vps:
                    # Context-parallel ranks share the sharding of the data-parallel ones.
                    for sharding, group in _shardings(dp * c, fast // t, p):
                        for e, et in experts:
                            out.append(
                                Layout(
                                    world_size=world_size,
                                    gpus_per_node=node,
                                    parallel=ParallelLayout(
                                        data_parallel=dp,
                                        tensor_parallel=t,
                                        pipeline_parallel=p,
                                        virtual_stages=v,
                                        expert_parallel=e,
                                        context_parallel=c,
                                        context_parallel_kind=kind,
                                        sharding=sharding,
                                        shard_group=group,
                                        expert_tensor_parallel=et,
                                        moe_dispatcher=choose_dispatcher(spec, t, e, et or t),
                                    ),
                                    nvlink_domain=nvlink_domain,
                                )
                            )
    if (ep is not None or etp is not None) and not out:
        raise UserError(
            f"no layout of {world_size} devices folds --expert-parallel {ep or 1}"
            + (f" with --expert-tensor-parallel {etp}" if etp else ""),
            "expert tensor x expert parallelism must divide tensor x data parallel ranks "
            "and the expert parallelism the experts (Megatron's MoE parallel folding)",
        )
    return out


#: The shortest sequence the search splits over context-parallel ranks. Llama 3 pre-trained
#: at 8K tokens without context parallelism and turned it on for its long-context stages up
#: to 128K (Dubey et al. 2024, sec. 3.3.2: CP 16 at 128K); Megatron-Core's context
#: parallelism guide calls it the remedy for long sequences whose activations do not fit.
#: Shorter sequences are split only when ``--context-parallel`` pins it.
CP_MIN_SEQ = 16384
#: The fewest tokens the search leaves each context-parallel rank (Llama 3's 128K over CP
#: 16 leaves 8K per rank): attention on shorter chunks cannot hide the exchange of the next
#: chunk (Liu et al. 2023, sec. 3: the block must outlast its transfer).
CP_MIN_RANK_TOKENS = 4096


def context_degrees(
    spec: ModelSpec,
    seq_len: int,
    devices: int,
    tp: int,
    cp: int | None,
    kind: ContextParallelKind | None,
) -> list[tuple[int, ContextParallelKind]]:
    """The context-parallel degrees and kinds worth planning on ``devices`` devices per
    tensor-parallel group: the pin, else 1 and, for sequences of at least
    :data:`CP_MIN_SEQ` tokens, every power of two that splits the sequence into ``2 cp``
    equal chunks (ring attention's causal balancing) with at least
    :data:`CP_MIN_RANK_TOKENS` tokens per rank, as ring attention and, where the heads per
    tensor-parallel rank split by it, Ulysses."""
    ring, ulysses = ContextParallelKind.RING, ContextParallelKind.ULYSSES
    heads = (spec.num_attention_heads or 1) // tp
    kv = max((spec.num_key_value_heads or spec.num_attention_heads or 1) // tp, 1)

    def splits(c: int, k: ContextParallelKind) -> bool:
        # What advisor.memory.context.check_context asks (a pinned degree was checked at
        # tensor parallel 1 before the search; here per tensor-parallel degree).
        if devices % c or seq_len % (2 * c if k is ring else c):
            return False
        return k is ring or (heads % c == 0 and not (kv % c and c % kv))

    if cp is not None:
        pinned = kind or ring
        return [(cp, pinned)] if cp == 1 or splits(cp, pinned) else []
    out = [(1, kind or ring)]
    if seq_len < CP_MIN_SEQ:
        return out
    for c in _powers_of_two(min(devices, seq_len // CP_MIN_RANK_TOKENS))[1:]:
        out.extend((c, k) for k in (ring, ulysses) if kind in (None, k) and splits(c, k))
    return out


def _shardings(dp: int, dp_in_node: int, pp: int) -> list[tuple[Sharding, int | None]]:
    if dp == 1:
        return [(Sharding.NONE, None)]
    if pp > 1:
        options = [Sharding.NONE, Sharding.ZERO1, Sharding.FSDP]
    else:
        options = [Sharding.NONE, Sharding.ZERO1, Sharding.ZERO2, Sharding.ZERO3, Sharding.FSDP]
    out: list[tuple[Sharding, int | None]] = [(s, None) for s in options]
    if 1 < dp_in_node < dp and dp % dp_in_node == 0:
        # Shard inside a node (NVLink domain), replicate across (Zhao et al. 2023, 3.2.2).
        out.append((Sharding.HSDP, dp_in_node))
    return out


def _expert_layouts(
    spec: ModelSpec, tp: int, dp: int, fast: int, ep: int | None, etp: int | None
) -> list[tuple[int, int | None]]:
    """(expert parallel, expert tensor parallel or None for Megatron's default) pairs of a
    stage of ``tp x dp`` ranks (see :func:`enumerate_layouts`)."""
    experts = spec.num_experts
    if experts <= 1:
        return [(1, None)] if ep in (None, 1) and etp in (None, 1) else []
    fold = tp * dp
    etps = [etp] if etp is not None else ([tp, 1] if tp > 1 else [1])
    out: list[tuple[int, int | None]] = []
    for et in etps:
        valid = [
            e
            for e in _powers_of_two(experts)
            if experts % e == 0 and fold % (et * e) == 0 and (ep is None or e == ep)
        ]
        if ep is not None and ep not in valid and experts % ep == 0 and fold % (et * ep) == 0:
            valid = [ep]  # a pinned degree that is not a power of two
        if not valid:
            continue
        inside = [e for e in valid if e * et <= fast]
        chosen = {max(inside)} if inside else set()
        # The widest expert group: with ETP 1 (its EP covers what ETP = TP's would, on
        # the same ranks; Megatron's README prefers EP over TP for the experts).
        if et == 1 or ep is not None or len(etps) == 1:
            chosen.add(max(valid))
        if ep is None and et == tp:
            chosen.add(1)
        for e in sorted(chosen):
            if e == 1 and et != tp:
                continue  # without expert parallelism the experts follow TP
            out.append((e, None if et == tp and etp is None else et))
    return out


def choose_dispatcher(spec: ModelSpec, tp: int, ep: int, etp: int) -> MoeDispatcher:
    """The dispatcher that moves fewer bytes per token: all-to-all sends ``k (ep - 1) / ep``
    rows each way plus ``(etp - 1) k`` over the expert tensor group, all-gather ``etp x ep
    - 1`` rows whatever ``k`` (:func:`advisor.cost.moe.dispatch_volumes`; Megatron's README:
    all-gather for TP-only layouts or a very large top-k, all-to-all with expert
    parallelism). DeepEP's flex dispatcher is never assumed (it needs DeepEP installed)."""
    k = spec.experts_per_token
    if spec.num_experts <= 1 or ep * etp == 1:
        return MoeDispatcher.ALLTOALL
    alltoall = k * (ep - 1) / ep + (etp - 1) * k
    allgather = etp * ep - 1
    return MoeDispatcher.ALLGATHER if allgather < alltoall else MoeDispatcher.ALLTOALL


def moe_layouts(
    layouts: list[Layout],
    pin: MoeOverlap | None,
    balance: MoeBalance,
    world_size: int,
) -> list[Layout]:
    """An MoE model's ``layouts`` with the router's ``balance`` (``--moe-balance``) and a
    pinned ``--moe-overlap``. A pin keeps the layouts its schedule runs on
    (:func:`~advisor.cost.expert_overlap.overlap_problem` on what a layout decides: expert
    parallelism, the dispatcher, the pipeline and its interleaving; recomputation, precision
    and micro-batches are the plan's, checked where it is built, advisor.plan.overlap).

    Raises:
        UserError: when the pin leaves no layout (the first layout's reason).
    """
    out: list[Layout] = []
    first: tuple[str, str] | None = None
    for lay in layouts:
        p = lay.parallel
        if pin is not None and pin is not MoeOverlap.NONE:
            problem = overlap_problem(
                pin,
                expert_parallel=p.expert_parallel,
                dispatcher=p.moe_dispatcher,
                checkpointing=Checkpointing.NONE,
                pipeline_parallel=p.pipeline_parallel,
                virtual_stages=p.virtual_stages,
                grad_accumulation=2,
            )
            if problem is not None:
                first = first or problem
                continue
        if pin is not None or balance is not p.moe_balance:
            overlap = p.moe_overlap if pin is None else pin
            parallel = p.updated(moe_overlap=overlap, moe_balance=balance)
            lay = lay.model_copy(update={"parallel": parallel})
        out.append(lay)
    if layouts and not out and first is not None:
        raise UserError(
            f"no layout of {world_size} devices runs it: {first[0]}",
            first[1].replace("--pipeline-parallel", "--pp") + " (or let --moe-overlap be searched)",
        )
    return out
