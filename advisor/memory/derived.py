"""What the memory model derives from one model spec, computed once per spec: a frozen
:class:`MemoryModel` whose cached properties hold the dimensions, the parameter tensors,
their count and a block's matmuls, and the public functions of a spec alone."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

from advisor.memory.matmuls import (
    Matmul,
    block_matmuls_of,
    recompute_share_of,
    saved_matmuls_of,
)
from advisor.memory.params import (
    DEFAULT_LORA_TARGETS,
    ParamTensor,
    adapter_tensors,
    count,
    enumerate_tensors,
    lora_full_tensors,
    shape_of,
)
from advisor.memory.ssm import block_mixers
from advisor.model.spec import ModelSpec


@dataclass(frozen=True, eq=False)
class MemoryModel:
    """One model spec and what the memory model derives from it, each computed once.

    NOTE: the plan search reads these thousands of times for one model: build one per spec
    (a :class:`~advisor.memory.memo.MemoryMemo` holds one) and pass it where a function
    takes ``ModelSpec | MemoryModel``. ``eq=False``: hashed by identity, as a memo key.

    Attributes:
        spec: the model's shapes.
    """

    spec: ModelSpec

    @cached_property
    def shape(self) -> Mapping[str, int]:
        """The dimensions by short name (:func:`~advisor.memory.params.shape_of`)."""
        return shape_of(self.spec)

    @cached_property
    def tensors(self) -> tuple[ParamTensor, ...]:
        """Every parameter tensor (:func:`~advisor.memory.params.enumerate_tensors`)."""
        return tuple(enumerate_tensors(self.spec))

    @cached_property
    def parameters(self) -> int:
        """All parameters of the model."""
        return count(self.tensors)

    @cached_property
    def matmuls(self) -> tuple[Matmul, ...]:
        """A dense block's weight matmuls in forward order."""
        return tuple(block_matmuls_of(self.spec))

    @cached_property
    def saved_matmuls(self) -> tuple[Matmul, ...]:
        """The matmuls whose outputs op-level selective checkpointing saves."""
        return tuple(saved_matmuls_of(self.matmuls))

    @cached_property
    def block_mixers(self) -> tuple[tuple[int, frozenset[str]], ...] | None:
        """The mixers of a hybrid or state-space model's blocks (:func:`block_mixers`)."""
        return block_mixers(self.spec)

    @cached_property
    def recompute_share(self) -> float:
        """The share of a block's weight-GEMM FLOPs op-level selective AC recomputes."""
        return recompute_share_of(self.spec, self.shape, self.matmuls, self.saved_matmuls)


def as_model(spec: ModelSpec | MemoryModel) -> MemoryModel:
    """``spec``'s :class:`MemoryModel` (``spec`` itself when it is one)."""
    return spec if isinstance(spec, MemoryModel) else MemoryModel(spec)


def param_tensors(spec: ModelSpec | MemoryModel) -> list[ParamTensor]:
    """The parameter tensors of a transformer ``spec``.

    Raises:
        UserError: for a CNN, whose shapes a ModelSpec does not describe tensor by tensor.
    """
    return list(as_model(spec).tensors)


def lora_tensors(
    spec: ModelSpec | MemoryModel, rank: int, targets: frozenset[str] = DEFAULT_LORA_TARGETS
) -> list[ParamTensor]:
    """LoRA adapters of ``spec``'s matrices (:func:`~advisor.memory.params.adapter_tensors`).

    Args:
        spec: the model's shapes.
        rank: the adapter rank r.
        targets: which per-layer matrices are adapted (default q, k, v, o).

    Returns:
        The adapter tensors; each adapted matrix adds ``r * (d_in + d_out)`` parameters.
    """
    return adapter_tensors(as_model(spec).tensors, rank, targets)


def trainable_count(model: MemoryModel, adapters: bool, rank: int, targets: frozenset[str]) -> int:
    """Parameters that get gradients: all of them, or LoRA's rank-``rank`` adapters on
    ``targets`` and the whole tensors trained beside them (``adapters``)."""
    if adapters:
        full = lora_full_tensors(model.tensors, targets)
        return count(lora_tensors(model, rank, targets)) + count(full)
    return count(model.tensors)


def block_matmuls(spec: ModelSpec | MemoryModel) -> list[Matmul]:
    """A dense block's weight matmuls in the order its forward runs them
    (:func:`~advisor.memory.matmuls.block_matmuls_of`)."""
    return list(as_model(spec).matmuls)


def selective_op_recompute_share(spec: ModelSpec | MemoryModel) -> float:
    """The share of a block's weight-GEMM FLOPs that op-level selective AC recomputes
    (:func:`~advisor.memory.matmuls.recompute_share_of`), in [0, 1]."""
    return as_model(spec).recompute_share
