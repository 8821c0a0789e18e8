"""Architecture details of the memory model against transformers' own modules.

q/k norms (Qwen3 per head, OLMo 2 over the projection), OLMo 2's post-norms and Gemma 3's
sandwich norms (its RMSNorm keeps the normalized tensor in fp32): every block's saved tensors
(saved-tensor hooks, de-duplicated by storage) against ``layer_activation_bytes``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from advisor.config import Attention, Precision
from advisor.memory import layer_activation_bytes
from advisor.model import load_hf_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests.memhelpers import count_layer_activations  # noqa: E402
from tests.model.test_model_families import _BASE, CASES, _config, _write  # noqa: E402


@pytest.mark.parametrize(
    ("case", "attn", "extra"),
    [
        ("qwen3", "sdpa", {}),
        ("qwen3", "eager", {}),
        ("olmo2", "sdpa", {}),
        ("olmo2", "eager", {}),
        # NOTE: Gemma 3's sliding-window layers pass an explicit mask, which the CPU's flash
        # SDPA cannot take (it falls back to the math kernel); eager is what runs here.
        ("gemma3-text", "eager", {}),
        # A sliding window changes nothing transformers' eager attention keeps: it masks the
        # full s x s scores (and FlashAttention is O(s) either way); only FLOPs of a windowed
        # kernel shrink.
        ("gemma3-text", "eager", {"sliding_window": 8}),
        # MLA: RoPE tables as wide as qk_rope_head_dim (eager: see test_model_families).
        ("deepseek-v3", "eager", {}),
        # Partial rotary (Phi-4-mini's layout): tables head_dim x partial_rotary_factor wide.
        # NOTE: eager only: Phi-3 builds q by torch.cat, so the CPU flash kernel returns its
        # output head-major and o_proj's input becomes a copy (CUDA's flash SDPA returns
        # sequence-major, a view, as the model counts).
        ("phi3", "eager", {"partial_rotary_factor": 0.5}),
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_norm_placement_and_qk_norm_activations(
    case: str, attn: str, extra: dict[str, float], dtype: str, tmp_path: Path
) -> None:
    _, model_type, keys = next(c for c in CASES if c[0] == case)
    torch.manual_seed(0)
    cfg = _config(model_type, {**keys, **extra})
    cfg._attn_implementation = attn
    model = transformers.AutoModelForCausalLM.from_config(cfg).to(getattr(torch, dtype))
    model.train()
    spec = load_hf_config(_write(cfg, tmp_path))
    b, s = 2, 32
    measured = count_layer_activations(model, b, s, _BASE["vocab_size"])
    precision = Precision.FP32 if dtype == "float32" else Precision.BF16
    kernel = Attention.FLASH if attn == "sdpa" else Attention.EAGER
    per_block = layer_activation_bytes(spec, b, s, kernel, precision)
    # The shared RoPE cos/sin tables (s x head_dim each, compute dtype) are saved by every
    # block's RoPE; the hooks attribute them to each block, the model counts them once.
    assert spec.head_dim is not None
    rope = spec.mla.qk_rope_head_dim if spec.mla is not None else spec.head_dim
    if "partial_rotary_factor" in extra:
        assert spec.rotary_dim == int(spec.head_dim * extra["partial_rotary_factor"])
        rope = spec.rotary_dim
    tables = 2 * s * rope * (4 if dtype == "float32" else 2)
    # Summed over the blocks: an MoE model's estimate is its dense/MoE block average.
    est = len(measured) * (per_block + tables)
    # NOTE: routed tokens per expert vary with the random router: MoE within 5%, as in
    # test_model_families; dense blocks are exact.
    tol = 0.05 if spec.num_experts > 1 else 0.01
    assert est == pytest.approx(sum(measured), rel=tol), (est, sum(measured))


def test_mla_latent_down_projections_are_replicated_under_tensor_parallelism() -> None:
    """Megatron-Core builds MLA's linear_q_down_proj / linear_kv_down_proj duplicated on
    every tensor-parallel rank; the up-projections are column-parallel."""
    from advisor.memory import MemoryModel, param_tensors
    from advisor.memory.sharding import local_tensors
    from advisor.model import get_model_profile

    model = MemoryModel(get_model_profile("deepseek-v3"))
    full = {t.name: t.shape for t in param_tensors(model)}
    layers = model.shape["L"]
    local = {t.name: t.shape for t in local_tensors(model, 8, 1, 1, "only", layers)}
    assert local["q_a"] == full["q_a"] and local["kv_a"] == full["kv_a"]
    assert local["q"][0] * 8 == full["q"][0] and local["kv_b"][0] * 8 == full["kv_b"][0]
