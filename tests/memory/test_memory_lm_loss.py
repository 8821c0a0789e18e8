"""The LM loss's saved bytes by the dtype its logits are in, measured on the CPU.

Hugging Face's ``ForCausalLMLoss`` upcasts the logits to fp32 before the cross-entropy: the
log-softmax it keeps for backward is fp32, 4 B per logit, whatever the model's dtype. A loss
run on the 16-bit logits themselves (what Megatron's ``--fp16-lm-cross-entropy`` asked for in
its legacy models) keeps a 16-bit log-softmax, 2 B per logit. Saved-tensor hooks count what
autograd keeps, deduplicated by storage.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
loss_utils = pytest.importorskip("transformers.loss.loss_utils")

from advisor.config import Precision, Stack  # noqa: E402
from advisor.memory import loss_memory  # noqa: E402
from tests.memhelpers import replace_spec, spec_for  # noqa: E402


def _saved(fn: Any) -> int:
    seen: dict[int, int] = {}

    def pack(x: Any) -> Any:
        seen[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        fn()
    return sum(seen.values())


def _case(dtype: Any, t: int, v: int) -> tuple[Any, Any]:
    torch.manual_seed(0)
    logits = torch.randn(1, t, v, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, v, (1, t))
    return logits, labels


PRECISION = {torch.bfloat16: Precision.BF16_MIXED, torch.float16: Precision.FP16_MIXED}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("t", "v"), [(256, 1000), (512, 4096)])
def test_hf_loss_keeps_fp32_log_probabilities(dtype: Any, t: int, v: int) -> None:
    logits, labels = _case(dtype, t, v)
    measured = _saved(lambda: loss_utils.ForCausalLMLoss(logits, labels, v))
    spec = replace_spec(spec_for("llama"), vocab_size=v)
    model = loss_memory(spec, 1, t, PRECISION[dtype], stack=Stack.HF)
    # fp32 log-softmax (4 t V), int64 shifted labels (a view of the t + 1 padded labels: one
    # row more than the model's 8 t) and nll's fp32 total weight.
    assert measured - model.saved_bytes == 8
    assert measured >= 4 * t * v


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_16bit_loss_keeps_half_and_the_fused_stack_counts_the_upcast(dtype: Any) -> None:
    t, v = 512, 4096
    logits, labels = _case(dtype, t, v)
    upcast = _saved(lambda: torch.nn.functional.cross_entropy(logits[0].float(), labels[0]))
    native = _saved(lambda: torch.nn.functional.cross_entropy(logits[0], labels[0]))
    # 2 B per logit fewer: the log-softmax kept in the logits' dtype (and nll's total weight,
    # 4 B in fp32, 2 B in 16-bit).
    assert upcast - native == 2 * t * v + 2
    # The fused stack's engines upcast first (Megatron-Core's calculate_logits_max,
    # torchtitan's pred.float()): the upcast loss, plus an fp32 log-sum-exp per token that
    # plain PyTorch's log-softmax does not keep, within 4 B per token.
    spec = replace_spec(spec_for("llama"), vocab_size=v)
    fused = loss_memory(spec, 1, t, PRECISION[dtype], stack=Stack.FUSED).saved_bytes
    assert 0 <= fused - upcast <= 4 * t + 4
