"""A model's exact parameter inventory, read from the real module, with each tensor's role.

The general path for a ``config.json`` whose ``model_type`` no built-in family reads
(:mod:`advisor.model.hfmeta` builds the model on the meta device) records every parameter
tensor as ``(name, shape, owning module's class, its parent's class)``. This module is
the pure half: it places each tensor by role (embedding, attention q/k/v/o, MLP
gate/up/down, routed and shared experts, router, norms, state-space mixer, LM head) and
groups identical blocks, so a :class:`advisor.model.spec.ModelSpec` can carry the
inventory and count parameters exactly; a tensor it cannot place is a user error naming
the module.
"""

from __future__ import annotations

import re
from collections import Counter

from pydantic import BaseModel, ConfigDict, Field

from advisor.errors import UserError

Shape = tuple[int, ...]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class RawParam(_Frozen):
    """One parameter as the module holds it (shared tensors listed once)."""

    name: str
    shape: Shape
    owner: str = Field(description="class of the module that owns the tensor")
    parent: str = Field(default="", description="class of the owner's parent module")


class RawModel(_Frozen):
    """What :mod:`advisor.model.hfmeta` reads off a model built on the meta device (cached)."""

    reader: str = Field(description="e.g. 'transformers 5.2.0, GptOssForCausalLM on meta'")
    model_type: str
    encoder_decoder: bool = False
    params: tuple[RawParam, ...]
    block_lists: tuple[str, ...] = Field(description="prefixes of the repeated-block lists")
    rotary: bool = Field(description="the model holds rotary-embedding buffers (RoPE)")
    attrs: dict[str, int | float | str | bool | None] = Field(default_factory=dict)
    synthesized: tuple[str, ...] = Field(
        default=(), description="tensors added outside the module (a VLM's LM head)"
    )


class InvTensor(_Frozen):
    """One tensor of the inventory with its role (see :data:`ROLES`)."""

    name: str
    shape: Shape
    role: str


class InvGroup(_Frozen):
    """One kind of block and how many times it occurs."""

    count: int = Field(gt=0)
    tensors: tuple[InvTensor, ...]


class Inventory(_Frozen):
    """The exact parameter tensors of a model: repeated blocks by kind, and the rest."""

    reader: str
    groups: tuple[InvGroup, ...]
    layout: tuple[int, ...] = Field(description="the group of each block, in order")
    outside: tuple[InvTensor, ...]
    approximated: tuple[str, ...] = Field(
        default=(), description="what the spec's representative fields do not describe"
    )

    def parameter_count(self) -> int:
        """Every parameter, shared tensors once."""
        blocks = sum(g.count * sum(_numel(t.shape) for t in g.tensors) for g in self.groups)
        return blocks + sum(_numel(t.shape) for t in self.outside)


def _numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# Module names by role: the names the reference implementations give their submodules.
_ATTN = {
    **dict.fromkeys(("q_proj", "q", "query", "wq"), "q"),
    **dict.fromkeys(("k_proj", "k", "key", "wk"), "k"),
    **dict.fromkeys(("v_proj", "v", "value", "wv"), "v"),
    **dict.fromkeys(("o_proj", "o", "out_proj", "dense", "c_proj", "wo"), "o"),
    **dict.fromkeys(("qkv_proj", "query_key_value", "c_attn", "wqkv", "qkv"), "qkv"),
    "relative_attention_bias": "relpos",
    # Multi-head latent attention (DeepSeek-V2/V3, arXiv:2405.04434): latent down/up.
    "q_a_proj": "mla_q_a",
    "q_b_proj": "mla_q_b",
    "kv_a_proj_with_mqa": "mla_kv_a",
    "kv_b_proj": "mla_kv_b",
}
_MLA_NORMS = {"q_a_layernorm": "mla_q_a_norm", "kv_a_layernorm": "mla_kv_a_norm"}
_MLP = {
    **dict.fromkeys(("gate_proj", "wi_0", "w1"), "gate"),
    **dict.fromkeys(("up_proj", "wi_1", "w3", "fc1", "dense_h_to_4h", "c_fc", "wi", "fc_in"), "up"),
    **dict.fromkeys(("down_proj", "wo", "w2", "fc2", "dense_4h_to_h", "c_proj", "fc_out"), "down"),
    "gate_up_proj": "gate_up",
}
_SSM_MODULES = {"in_proj": "ssm_in", "conv1d": "ssm_conv", "out_proj": "ssm_out"}
_SSM_LEAVES = {"a_log": "ssm_a", "d": "ssm_d", "dt_bias": "ssm_dt"}
_SHARED = ("shared_expert", "shared_experts", "shared_mlp")
_CROSS = ("encdecattention", "crossattention", "encoder_attn", "cross_attn")
_ROUTERS = ("router", "gate")
_QK_NORMS = ("q_norm", "k_norm", "q_layernorm", "k_layernorm")


class UnplacedModule(UserError):
    """A parameter tensor the general path cannot give a role."""


def _unplaced(raw: RawModel, p: RawParam, where: str) -> UnplacedModule:
    module = p.name.rsplit(".", 1)[0]
    return UnplacedModule(
        f"{raw.model_type}: cannot place module {module!r} ({p.owner}) {where}",
        "the general config.json path knows attention, MLP, expert, norm, state-space and "
        "embedding modules by their usual names; use a shipped profile or a size instead",
    )


def _block_role(raw: RawModel, p: RawParam, rest: str) -> str:
    segs = rest.lower().split(".")
    leaf, path = segs[-1], segs[:-1]
    mod = path[-1] if path else ""
    owner, parent = p.owner.lower(), p.parent.lower()
    bias = leaf.endswith("bias") and leaf not in ("dt_bias",)
    suffix = "_bias" if bias else ""
    if "experts" in path or mod == "experts":
        # 3-D expert tensors (E, ., .) named by the projection, or a ModuleList of experts.
        name = leaf.removesuffix("_bias") if leaf not in ("weight", "bias") else mod
        role = _MLP.get(name)
        if role is None:
            raise _unplaced(raw, p, "inside the routed experts")
        return "expert_" + role + suffix
    if any(s in _SHARED for s in path):
        role = _MLP.get(mod)
        if role is None:
            raise _unplaced(raw, p, "inside the shared experts")
        return "shared_" + role + suffix
    if mod in _ROUTERS and "router" in owner:
        return "router" + suffix
    if mod in _ROUTERS and len(p.shape) == 2 and "linear" in owner and "moe" in parent:
        return "router" + suffix  # Mixtral-style: a bias-free nn.Linear named gate
    if "norm" in owner:
        if mod in _MLA_NORMS:
            return _MLA_NORMS[mod] + suffix
        return ("qk_norm" if mod in _QK_NORMS else "norm") + suffix
    in_attn = any("attn" in s or "attention" in s for s in path) or "attention" in parent
    if "attention" in owner and leaf == "sinks":
        return "sinks"
    if in_attn:
        role = _ATTN.get(mod)
        if role is None:
            raise _unplaced(raw, p, "inside attention")
        cross = any(s in _CROSS for s in path)
        return ("cross_" if cross else "") + role + suffix
    if "mamba" in owner or "mamba" in parent or "mixer" in owner:
        if mod in _SSM_MODULES and ("mamba" in parent or "mixer" in parent):
            return _SSM_MODULES[mod] + suffix
        if leaf in _SSM_LEAVES and ("mamba" in owner or "mixer" in owner):
            return _SSM_LEAVES[leaf]
    role = _MLP.get(mod)
    if role is not None:
        return role + suffix
    raise _unplaced(raw, p, "in a block")


def _outside_role(raw: RawModel, p: RawParam, vocab: int | None) -> str:
    segs = p.name.lower().split(".")
    leaf, mod = segs[-1], (segs[-2] if len(segs) > 1 else "")
    owner = p.owner.lower()
    if "embedding" in owner and len(p.shape) == 2:
        return "embed" if vocab is None or p.shape[0] == vocab else "position"
    if "norm" in owner:
        return ("embed_norm" if "emb" in mod else "final_norm") + (
            "_bias" if leaf == "bias" else ""
        )
    if "linear" in owner and vocab is not None and p.shape and p.shape[0] == vocab:
        return "lm_head" + ("_bias" if leaf == "bias" else "")
    raise _unplaced(raw, p, "outside the blocks")


def build_inventory(raw: RawModel) -> Inventory:
    """Place every tensor of ``raw`` by role and group identical blocks.

    Raises:
        UnplacedModule: naming the first module no role fits.
    """
    vocab = raw.attrs.get("vocab_size")
    vocab_rows = vocab if isinstance(vocab, int) and not isinstance(vocab, bool) else None
    lists = sorted(raw.block_lists, key=len, reverse=True)
    blocks: dict[tuple[str, int], list[InvTensor]] = {}
    outside: list[InvTensor] = []
    for p in raw.params:
        for prefix in lists:
            m = re.match(rf"{re.escape(prefix)}\.(\d+)\.(.+)$", p.name)
            if m:
                rest = m.group(2)
                role = _block_role(raw, p, rest)
                blocks.setdefault((prefix, int(m.group(1))), []).append(
                    InvTensor(name=rest, shape=p.shape, role=role)
                )
                break
        else:
            outside.append(
                InvTensor(name=p.name, shape=p.shape, role=_outside_role(raw, p, vocab_rows))
            )
    if not any(t.role == "embed" for t in outside):
        raise UnplacedModule(
            f"{raw.model_type}: no token embedding found",
            "the general path reads language models (a token table of vocab_size rows)",
        )
    kinds: dict[tuple[InvTensor, ...], int] = {}
    layout: list[int] = []
    for key in sorted(blocks, key=lambda k: (raw.block_lists.index(k[0]), k[1])):
        sig = tuple(blocks[key])
        if sig not in kinds:
            kinds[sig] = 0
        kinds[sig] += 1
        layout.append(list(kinds).index(sig))
    if not kinds:
        raise UnplacedModule(
            f"{raw.model_type}: no repeated blocks found", "the general path reads layer stacks"
        )
    groups = tuple(InvGroup(count=n, tensors=sig) for sig, n in kinds.items())
    return Inventory(reader=raw.reader, groups=groups, layout=tuple(layout), outside=tuple(outside))


def roles(group: InvGroup) -> Counter[str]:
    """How many tensors of each role one block of ``group`` holds."""
    return Counter(t.role for t in group.tensors)


def find(group: InvGroup, role: str) -> InvTensor | None:
    """The first tensor of ``role`` in ``group``, if any."""
    return next((t for t in group.tensors if t.role == role), None)
