"""How a parallel layout splits the model: the layouts the engines can run, and the
parameter tensors one device holds under tensor, pipeline and expert parallelism (before
ZeRO sharding, which :mod:`advisor.memory.states` applies)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from advisor.config import TrainingConfig
from advisor.errors import UserError
from advisor.memory.derived import MemoryModel
from advisor.memory.moe import expert_fold_problem
from advisor.memory.params import ParamTensor, Role


def check_layout(config: TrainingConfig, d: Mapping[str, int]) -> None:
    """Refuse layouts the engines cannot run, with what to change."""
    layout = config.layout
    tp, pp = layout.tensor_parallel, layout.pipeline_parallel
    if tp > 1 and d["a"] % tp:
        raise UserError(
            f"tensor parallelism {tp} does not divide the {d['a']} attention heads",
            "pick a tensor-parallel degree that divides the number of heads",
        )
    if pp > d["L"]:
        raise UserError(
            f"pipeline parallelism {pp} exceeds the model's {d['L']} layers",
            "pick at most one pipeline stage per layer",
        )
    problem = expert_fold_problem(layout, d["E"])
    if problem:
        raise UserError(*problem)
    if config.savers.optimizer_in_backward and config.batch.grad_accumulation > 1:
        raise UserError(
            "the optimizer step fused into backward cannot accumulate gradients",
            "use gradient accumulation 1 with per-layer updates (LOMO, GaLore)",
        )


def layout_tensors(
    tensors: Iterable[ParamTensor],
    tp: int,
    ep: int,
    pp: int,
    stage: str,
    layers: int,
    tied: bool,
    stage_layers: int,
    etp: int | None = None,
) -> list[ParamTensor]:
    """The parameter tensors one device holds under the layout (before ZeRO sharding).

    ``stage`` is ``only`` without pipeline parallelism, else ``first``, ``middle`` or
    ``last``. Block tensors keep the ``stage_layers`` blocks of the stage
    (:func:`~advisor.memory.pipeline.pipeline_split`); the embedding sits on the first
    stage, the final norm and LM head on the last (a tied head keeps a copy of the
    embedding there, as Megatron does). Tensor parallelism splits block matrices and the
    vocabulary by ``tp`` (norms and the router are replicated); expert parallelism splits
    the experts by ``ep``; the routed experts' matrices split by the expert tensor-parallel
    degree ``etp`` (None: ``tp``; Megatron ``--expert-tensor-parallel-size``), the shared
    experts follow the dense layers' ``tp`` (megatron/core/transformer/moe/README.md,
    "Shared Experts").
    """
    etp = tp if etp is None else etp
    L = max(layers, 1)
    first, last = stage in ("only", "first"), stage in ("only", "last")
    out: list[ParamTensor] = []
    for t in tensors:
        shape = t.shape
        count = t.count
        if t.per_layer:
            count = math.ceil(count * stage_layers / L)
            if t.expert:
                count = math.ceil(count / ep)
            # The router and MLA's latent down-projections (q_a, kv_a) are replicated
            # across tensor-parallel ranks (Megatron-Core MLASelfAttention builds
            # linear_q_down_proj / linear_kv_down_proj with parallel_mode "duplicated").
            split = etp if t.expert else tp
            if len(shape) == 2 and split > 1 and t.name not in ("router", "q_a", "kv_a"):
                if t.row:
                    shape = (shape[0], math.ceil(shape[1] / split))
                else:
                    shape = (math.ceil(shape[0] / split), shape[1])
        else:
            head_side = t.role is Role.OUTPUT or t.name == "final_norm"
            if t.role is Role.EMBEDDING:
                keep = first or (last and tied and pp > 1)
            else:
                keep = last if head_side else first
            if not keep:
                continue
            if t.role in (Role.EMBEDDING, Role.OUTPUT) and len(shape) == 2 and tp > 1:
                shape = (math.ceil(shape[0] / tp), shape[1])  # vocabulary-parallel
        heads = math.ceil(t.heads / tp) if t.heads else 0
        out.append(ParamTensor(t.name, shape, t.role, count, heads, t.per_layer, t.expert, t.row))
    return out


def local_tensors(
    model: MemoryModel,
    tp: int,
    ep: int,
    pp: int,
    stage: str,
    stage_layers: int,
    etp: int | None = None,
) -> tuple[ParamTensor, ...]:
    """:func:`layout_tensors` of ``model``'s tensors: what one device of the layout holds.

    NOTE: the plan search asks for the same layout's tensors thousands of times (every batch
    geometry and memory saver of it): call it through the search's
    :class:`~advisor.memory.memo.MemoryMemo`, whose key is these arguments, all it reads.
    """
    tied = bool(model.spec.tie_word_embeddings)
    return tuple(
        layout_tensors(model.tensors, tp, ep, pp, stage, model.shape["L"], tied, stage_layers, etp)
    )
