"""What the cost model reads of a model: its layer shape, per-layer parameter figures, and the
weight GEMMs of one block (split by tensor and expert parallelism)."""

from __future__ import annotations

import dataclasses
import math

from pydantic import BaseModel, ConfigDict

from advisor.cost.data import LayerShape
from advisor.model.blocks import Kind
from advisor.model.spec import ModelSpec

# (out, in, row-parallel, expert) of each weight matrix of one block.
WeightMatrices = tuple[tuple[int, int, bool, bool], ...]


def layer_shape(spec: ModelSpec) -> LayerShape:
    """The layer shape a calibration measures for this model (its true widths)."""
    h = spec.hidden_size or 0
    heads = spec.num_attention_heads or 1
    return LayerShape(
        hidden=h,
        intermediate=spec.intermediate_size or 4 * h,
        heads=heads,
        kv_heads=spec.num_key_value_heads or heads,
        head_dim=spec.head_dim or h // heads,
        gated_mlp=spec.gated_mlp,
    )


class ModelShape(BaseModel):
    """The model's figures the step time reads (per-layer averages over the stack)."""

    model_config = ConfigDict(frozen=True)

    layers: int
    layer_matmul_params: int  # the block's matrix parameters a token multiplies (active experts)
    layer_params: int
    head_params: int  # LM head matmul (vocab x hidden)
    params: int
    hidden: int
    heads: int


def model_shape(spec: ModelSpec) -> ModelShape:
    """The :class:`ModelShape` of ``spec``."""
    h = spec.hidden_size or 0
    layers = spec.layer_repeats()
    # Blocks may differ (DeepSeek-V3: 3 dense, 58 MoE): per-layer figures are averages over
    # the stack, so layers x figure is exact. A token multiplies the active parameters: an
    # MoE layer's router, shared experts and experts_per_token of its routed experts.
    outside = spec.embedding_parameter_count()
    return ModelShape(
        layers=layers,
        layer_matmul_params=(spec.active_parameter_count() - outside) // layers,
        layer_params=(spec.parameter_count() - outside) // layers,
        head_params=(spec.vocab_size or 0) * h,
        params=spec.parameter_count(),
        hidden=h,
        heads=spec.num_attention_heads or 1,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Gemm:
    """One weight GEMM of a block per micro-batch: (m x k) @ (k x n), ``count`` times."""

    m: float
    n: int
    k: int
    count: float = 1.0

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.n * self.k * self.count


def block_gemms(
    spec: ModelSpec,
    tokens: int,
    tp: int = 1,
    ep: int = 1,
    *,
    matrices: WeightMatrices | None = None,
    etp: int | None = None,
    expert_rows: float = 1.0,
) -> list[Gemm]:
    """The forward GEMMs of one block for ``tokens`` tokens on one TP/EP shard.

    Column-parallel layers split their output width by ``tp``, row-parallel ones their
    input; with sequence parallelism every GEMM still sees all ``tokens`` (Korthikanti et
    al. 2022). Routed experts split by the expert tensor-parallel degree ``etp`` (None:
    ``tp``) and each sees the rows of its expert tensor group: ``tokens / tp x etp x top-k
    x ep / experts`` (``tokens x top-k x ep / experts`` where ``etp == tp``), scaled by
    ``expert_rows`` (a capacity factor's padded or dropped rows;
    :func:`advisor.memory.moe.routed_rows`). ``matrices``: :func:`weight_matrices` of
    ``spec``, when the caller holds them already.
    """
    out: list[Gemm] = []
    experts = max(spec.num_experts, 1)
    etp = tp if etp is None else etp
    for n, k, row, expert in matrices if matrices is not None else weight_matrices(spec):
        split = etp if expert else tp
        if row:
            k = max(1, k // split)
        else:
            n = max(1, n // split)
        if expert:
            local = max(1, experts // ep)
            m = tokens * spec.experts_per_token * ep / experts
            if etp != tp:
                m = m * etp / tp
            if expert_rows != 1.0:
                m *= expert_rows
            out.append(Gemm(m=m, n=n, k=k, count=local))
        else:
            out.append(Gemm(m=tokens, n=n, k=k, count=1.0))
    return out


def weight_matrices(spec: ModelSpec) -> WeightMatrices:
    """(out, in, row-parallel, expert) of each weight matrix of the commonest block (one
    routed expert's), from the block inventory (:attr:`ModelSpec.block
    <advisor.model.spec.ModelSpec.block>`): Megatron's row-parallel layers split their
    input dimension across TP ranks, the others (column-parallel) their output (Shoeybi et
    al. 2019, sec. 3); shared experts are dense and replicated."""
    out: list[tuple[int, int, bool, bool]] = []
    if spec.cnn is not None:
        # A CNN's trunk: each convolution as its implicit GEMM (out channels x in channels
        # x kernel window), none split by tensor parallelism.
        for _, shape in spec.layer_matrix_shapes():
            if len(shape) >= 2:
                out.append((shape[0], math.prod(shape[1:]), False, False))
        return tuple(out)
    for t in spec.block.common.tensors:
        gemm = t.gemm
        if gemm is not None:
            out.append((gemm[0], gemm[1], t.row, t.kind is Kind.ROUTED))
    return tuple(out)
