"""What a Mamba-2 mixer saves for backward, and which mixers each block of a hybrid or
state-space model holds.

Two implementations run the mixer in training:

- ``hf``: transformers' reference (``Mamba2Mixer`` / ``NemotronHMamba2Mixer`` without
  the hub kernels, which transformers 5 does not load by default): the chunked
  state-space duality algorithm of Dao & Gu 2024 (arXiv:2405.21060, sec. 7, "SSD
  minimal") in plain torch ops, padded to whole chunks, with chunk x chunk decay and
  score tensors per head. Counted op by op from the saved tensors of its forward and
  measured with saved-tensor hooks on the CPU (tests/model/test_hf_general.py).
- ``fused``: mamba_ssm's ``MambaSplitConv1dScanCombinedFn``, which saves the in_proj
  output ``zxbcdt``, the scan output ``out_x`` and the gated norm's fp32 ``rstd`` and
  recomputes the rest in backward (mamba_ssm/ops/triton/ssd_combined.py,
  ``ctx.save_for_backward``). Taken from the source: it needs CUDA to run.
"""

from __future__ import annotations

from advisor.model.shape import SsmShape
from advisor.model.spec import ModelSpec

# Inventory roles by the mixer they belong to.
_ATTENTION = frozenset({"q", "k", "v", "o", "qkv", "mla_q_a", "mla_q_b", "mla_kv_a", "mla_kv_b"})
_MLP = frozenset({"gate", "up", "down", "gate_up"})

SSM, ATTENTION, MLP, MOE = "ssm", "attention", "mlp", "moe"
_STANDARD = (frozenset({ATTENTION, MLP}), frozenset({ATTENTION, MOE}))


def block_mixers(spec: ModelSpec) -> tuple[tuple[int, frozenset[str]], ...] | None:
    """The mixers of each kind of block and how many blocks are of that kind, for a model
    whose blocks are not all attention + MLP (Mamba-2, Nemotron-H's one mixer per block);
    ``None`` for the others, which the per-block model counts as one block kind."""
    inv = spec.inventory
    if inv is None:
        return None
    mixers: list[tuple[int, frozenset[str]]] = []
    for gi, group in enumerate(inv.groups):
        roles = {t.role for t in group.tensors}
        kinds: set[str] = set()
        if any(r.startswith("ssm_") for r in roles):
            kinds.add(SSM)
        if roles & _ATTENTION:
            kinds.add(ATTENTION)
        if any(r.startswith("expert_") for r in roles):
            kinds.add(MOE)
        elif roles & _MLP:
            kinds.add(MLP)
        mixers.append((inv.layout.count(gi), frozenset(kinds)))
    if all(kinds in _STANDARD for _, kinds in mixers):
        return None
    return tuple(mixers)


def mamba_mixer_bytes(
    ssm: SsmShape, b: int, s: int, c: int, *, fused: bool, out_proj_in: int
) -> int:
    """Bytes one Mamba-2 mixer saves for backward, its input (the norm's output) apart.

    Args:
        ssm: the mixer's shape.
        b: sequences per device.
        s: tokens per sequence.
        c: bytes of the compute dtype (in_proj's output).
        fused: mamba_ssm's fused kernel, else transformers' reference.
        out_proj_in: bytes per element out_proj keeps of its input (0 when frozen).
    """
    t = b * s
    H, P, N, G, K, cs = (
        ssm.num_heads,
        ssm.head_dim,
        ssm.state_size,
        ssm.n_groups,
        ssm.conv_kernel,
        ssm.chunk_size,
    )
    inner, conv, proj = ssm.inner, ssm.conv_dim, ssm.in_proj
    if fused:
        return c * t * proj + c * t * inner + 4 * t * G
    Lp = -(-s // cs) * cs  # padded to whole chunks
    nc = Lp // cs
    total = c * t * proj  # in_proj's output, kept whole by the conv's input view
    total += c * b * conv * (s + K - 1)  # the conv's output (padded), SiLU's input
    total += 3 * 4 * H  # A = -exp(A_log) (twice) and A * dt keep H fp32 values each
    total += 2 * c * t * H  # softplus's and clamp's inputs (dt)
    total += 4 * b * Lp * inner  # D's residual keeps the padded fp32 x
    # x * dt keeps dt in fp32 and x in fp32: in fp32 x is a view of the SiLU output
    # (x, B and C), else its own fp32 copy.
    total += 4 * t * H + (4 * t * conv if c == 4 else 4 * t * inner)
    total += 2 * cs * cs + 2 * (nc + 1) ** 2  # the segment sums' boolean masks
    total += 4 * b * H * Lp * cs  # L = exp(segsum(A)) per chunk
    total += 2 * 4 * b * Lp * H * N  # C and B (repeated to the heads) as G's bmm operands
    total += 4 * b * Lp * cs * H  # G, kept by M = G * L
    total += 4 * b * H * Lp * cs + 4 * b * Lp * inner  # M and x as Y_diag's operands
    total += 2 * 4 * b * H * Lp  # exp of the decays into and out of each chunk
    total += 2 * 4 * b * Lp * H * N  # B and B * decay as the states' operands
    total += 4 * b * H * (nc + 1) ** 2  # the decay between chunks
    # The chunk states as the operands of the inter-chunk einsum and of C x states. With
    # one chunk einsum reads the latter (and x for the states' einsum) as views; with more
    # it copies the states but the last, and x once more (measured).
    total += 4 * b * H * (nc + 1) * P * N
    total += (
        4 * b * H * (nc + 1) * P * N if nc == 1 else 4 * b * H * nc * P * N + 4 * b * Lp * inner
    )
    total += 4 * b * Lp * H * N  # C as C x states' operand
    total += 4 * b * Lp * inner  # C x states, kept by its product with the decay
    # The gated RMSNorm in fp32: the scan output, SiLU(z) (and z's fp32 copy when z is
    # not fp32), their product, an rstd per group, the normalised tensor; out_proj's input.
    total += (4 if c == 4 else 5) * 4 * t * inner + 4 * t * G
    total += out_proj_in * t * inner
    return total
