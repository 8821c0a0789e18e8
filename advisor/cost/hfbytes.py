"""What one Hugging Face block moves through memory outside its GEMMs, per attention score
and per token, as measured op by op (benchmarks/eager_bytes.py,
benchmarks/results/eager_bytes.json).

transformers' modules run eager PyTorch: every norm, residual add, rotary step, activation,
dtype cast and dropout is its own kernel reading and writing whole tensors, and under
``torch.autocast`` on CUDA many of them run in fp32 (the CUDA autocast lists put pow, rsqrt,
layer_norm and softmax in fp32: https://docs.pytorch.org/docs/stable/amp.html). The
benchmark records every ATen op of one block of transformers 5.25's GPT-2, Llama, OPT and
BERT (forward with the model's own loss, backward), each tensor's bytes with the dtypes CUDA
autocast gives it, and sums them per score element (batch x heads x s x s: the eager
attention's scores, probabilities, their casts, dropout and gradients, the score GEMMs'
reads and writes included), per element of the head-shared additive mask (batch x s x s),
and per token for hidden-state tensors outside the GEMMs and fused attention kernels,
in bytes per unit of width: h-wide tensors (hidden, q/k/v, norms) and f-wide ones (the MLP's
intermediate activation). GPT-2's tanh GELU (NewGELUActivation, eight Python-level ops,
all but the first in fp32 under autocast because ``pow`` is on the fp32 list) moves 196
bytes per intermediate element in a step; Llama's SwiGLU 28.
"""

from __future__ import annotations

from typing import NamedTuple

from advisor.config import Precision
from advisor.model.traits import ModuleLayout


class HfBytes(NamedTuple):
    """Bytes one block moves per score element, per mask element and per token per unit of
    width (forward, backward)."""

    score_fwd: float
    score_bwd: float
    mask_fwd: float  # per batch x s x s element of the head-shared additive mask
    mask_bwd: float
    h_fwd: float  # per token, per unit of hidden width
    h_bwd: float
    f_fwd: float  # per token, per unit of the MLP's intermediate width
    f_bwd: float


# (layout, attention, mode, dropout) -> bytes; copied from benchmarks/results/eager_bytes.json
# (tests/cost/test_hfbytes.py checks every row against it). mode: amp-fp16/amp-bf16 (fp32
# weights, autocast), fp16/bf16 (the module in 16-bit, no autocast), fp32. Llama has no
# dropout in its blocks by default (attention_dropout 0.0): measured without.
HF_BYTES: dict[tuple[str, str, str, bool], HfBytes] = {
    ("gpt2", "eager", "amp-fp16", True): HfBytes(
        33.00, 41.00, 4.00, 0.00, 74.3333, 116.3333, 76.00, 120.00
    ),
    ("gpt2", "eager", "amp-fp16", False): HfBytes(
        28.00, 36.00, 4.00, 0.00, 64.3333, 106.3333, 76.00, 120.00
    ),
    ("gpt2", "eager", "amp-bf16", True): HfBytes(
        33.00, 41.00, 4.00, 0.00, 74.3333, 116.3333, 76.00, 120.00
    ),
    ("gpt2", "eager", "amp-bf16", False): HfBytes(
        28.00, 36.00, 4.00, 0.00, 64.3333, 106.3333, 76.00, 120.00
    ),
    ("gpt2", "eager", "fp16", True): HfBytes(
        21.00, 23.00, 2.00, 0.00, 46.1667, 68.1667, 36.00, 58.00
    ),
    ("gpt2", "eager", "fp16", False): HfBytes(
        16.00, 18.00, 2.00, 0.00, 36.1667, 58.1667, 36.00, 58.00
    ),
    ("gpt2", "eager", "bf16", True): HfBytes(
        21.00, 23.00, 2.00, 0.00, 46.1667, 68.1667, 36.00, 58.00
    ),
    ("gpt2", "eager", "bf16", False): HfBytes(
        16.00, 18.00, 2.00, 0.00, 36.1667, 58.1667, 36.00, 58.00
    ),
    ("gpt2", "eager", "fp32", True): HfBytes(
        41.00, 45.00, 4.00, 0.00, 90.3333, 134.3333, 72.00, 116.00
    ),
    ("gpt2", "eager", "fp32", False): HfBytes(
        32.00, 36.00, 4.00, 0.00, 72.3333, 116.3333, 72.00, 116.00
    ),
    ("gpt2", "sdpa", "amp-fp16", True): HfBytes(
        0.00, 0.00, 0.00, 0.00, 66.3333, 104.3333, 76.00, 120.00
    ),
    ("gpt2", "sdpa", "amp-fp16", False): HfBytes(
        0.00, 0.00, 0.00, 0.00, 56.3333, 94.3333, 76.00, 120.00
    ),
    ("gpt2", "sdpa", "amp-bf16", True): HfBytes(
        0.00, 0.00, 0.00, 0.00, 66.3333, 104.3333, 76.00, 120.00
    ),
    ("gpt2", "sdpa", "amp-bf16", False): HfBytes(
        0.00, 0.00, 0.00, 0.00, 56.3333, 94.3333, 76.00, 120.00
    ),
    ("gpt2", "sdpa", "fp16", True): HfBytes(0.00, 0.00, 0.00, 0.00, 38.1667, 56.1667, 36.00, 58.00),
    ("gpt2", "sdpa", "fp16", False): HfBytes(
        0.00, 0.00, 0.00, 0.00, 28.1667, 46.1667, 36.00, 58.00
    ),
    ("gpt2", "sdpa", "bf16", True): HfBytes(0.00, 0.00, 0.00, 0.00, 38.1667, 56.1667, 36.00, 58.00),
    ("gpt2", "sdpa", "bf16", False): HfBytes(
        0.00, 0.00, 0.00, 0.00, 28.1667, 46.1667, 36.00, 58.00
    ),
    ("gpt2", "sdpa", "fp32", True): HfBytes(
        0.00, 0.00, 0.00, 0.00, 74.3333, 110.3333, 72.00, 116.00
    ),
    ("gpt2", "sdpa", "fp32", False): HfBytes(
        0.00, 0.00, 0.00, 0.00, 56.3333, 92.3333, 72.00, 116.00
    ),
    ("llama", "eager", "amp-fp16", False): HfBytes(
        28.00, 36.00, 4.00, 0.00, 200.3333, 413.00, 10.00, 18.00
    ),
    ("llama", "eager", "amp-bf16", False): HfBytes(
        28.00, 36.00, 4.00, 0.00, 200.3333, 413.00, 10.00, 18.00
    ),
    ("llama", "eager", "fp16", False): HfBytes(
        24.00, 28.00, 2.00, 0.00, 148.2917, 288.3333, 10.00, 18.00
    ),
    ("llama", "eager", "bf16", False): HfBytes(
        32.00, 36.00, 2.00, 0.00, 148.2917, 288.3333, 10.00, 18.00
    ),
    ("llama", "eager", "fp32", False): HfBytes(
        32.00, 36.00, 4.00, 0.00, 194.3333, 391.00, 20.00, 36.00
    ),
    ("llama", "sdpa", "amp-fp16", False): HfBytes(
        0.00, 0.00, 0.00, 0.00, 192.3333, 405.00, 10.00, 18.00
    ),
    ("llama", "sdpa", "amp-bf16", False): HfBytes(
        0.00, 0.00, 0.00, 0.00, 192.3333, 405.00, 10.00, 18.00
    ),
    ("llama", "sdpa", "fp16", False): HfBytes(
        0.00, 0.00, 0.00, 0.00, 140.2917, 280.3333, 10.00, 18.00
    ),
    ("llama", "sdpa", "bf16", False): HfBytes(
        0.00, 0.00, 0.00, 0.00, 140.2917, 280.3333, 10.00, 18.00
    ),
    ("llama", "sdpa", "fp32", False): HfBytes(
        0.00, 0.00, 0.00, 0.00, 178.3333, 375.00, 20.00, 36.00
    ),
    ("opt", "eager", "amp-fp16", True): HfBytes(
        33.00, 41.00, 4.00, 0.00, 90.3333, 148.3333, 4.00, 8.00
    ),
    ("opt", "eager", "amp-fp16", False): HfBytes(
        28.00, 36.00, 4.00, 0.00, 80.3333, 138.3333, 4.00, 8.00
    ),
    ("opt", "eager", "amp-bf16", True): HfBytes(
        33.00, 41.00, 4.00, 0.00, 90.3333, 148.3333, 4.00, 8.00
    ),
    ("opt", "eager", "amp-bf16", False): HfBytes(
        28.00, 36.00, 4.00, 0.00, 80.3333, 138.3333, 4.00, 8.00
    ),
    ("opt", "eager", "fp16", True): HfBytes(29.00, 33.00, 2.00, 0.00, 50.1667, 76.1667, 4.00, 8.00),
    ("opt", "eager", "fp16", False): HfBytes(
        24.00, 28.00, 2.00, 0.00, 40.1667, 66.1667, 4.00, 8.00
    ),
    ("opt", "eager", "bf16", True): HfBytes(37.00, 41.00, 2.00, 0.00, 50.1667, 76.1667, 4.00, 8.00),
    ("opt", "eager", "bf16", False): HfBytes(
        32.00, 36.00, 2.00, 0.00, 40.1667, 66.1667, 4.00, 8.00
    ),
    ("opt", "eager", "fp32", True): HfBytes(
        41.00, 45.00, 4.00, 0.00, 98.3333, 150.3333, 8.00, 16.00
    ),
    ("opt", "eager", "fp32", False): HfBytes(
        32.00, 36.00, 4.00, 0.00, 80.3333, 132.3333, 8.00, 16.00
    ),
    ("opt", "sdpa", "amp-fp16", True): HfBytes(
        0.00, 0.00, 0.00, 0.00, 82.3333, 132.3333, 4.00, 8.00
    ),
    ("opt", "sdpa", "amp-fp16", False): HfBytes(
        0.00, 0.00, 0.00, 0.00, 72.3333, 122.3333, 4.00, 8.00
    ),
    ("opt", "sdpa", "amp-bf16", True): HfBytes(
        0.00, 0.00, 0.00, 0.00, 82.3333, 132.3333, 4.00, 8.00
    ),
    ("opt", "sdpa", "amp-bf16", False): HfBytes(
        0.00, 0.00, 0.00, 0.00, 72.3333, 122.3333, 4.00, 8.00
    ),
    ("opt", "sdpa", "fp16", True): HfBytes(0.00, 0.00, 0.00, 0.00, 42.1667, 60.1667, 4.00, 8.00),
    ("opt", "sdpa", "fp16", False): HfBytes(0.00, 0.00, 0.00, 0.00, 32.1667, 50.1667, 4.00, 8.00),
    ("opt", "sdpa", "bf16", True): HfBytes(0.00, 0.00, 0.00, 0.00, 42.1667, 60.1667, 4.00, 8.00),
    ("opt", "sdpa", "bf16", False): HfBytes(0.00, 0.00, 0.00, 0.00, 32.1667, 50.1667, 4.00, 8.00),
    ("opt", "sdpa", "fp32", True): HfBytes(0.00, 0.00, 0.00, 0.00, 82.3333, 118.3333, 8.00, 16.00),
    ("opt", "sdpa", "fp32", False): HfBytes(0.00, 0.00, 0.00, 0.00, 64.3333, 100.3333, 8.00, 16.00),
    ("bert", "eager", "amp-fp16", True): HfBytes(
        29.00, 37.00, 0.00, 0.00, 86.3333, 144.3333, 4.00, 8.00
    ),
    ("bert", "eager", "amp-fp16", False): HfBytes(
        20.00, 28.00, 0.00, 0.00, 76.3333, 134.3333, 4.00, 8.00
    ),
    ("bert", "eager", "amp-bf16", True): HfBytes(
        37.00, 45.00, 0.00, 0.00, 86.3333, 144.3333, 4.00, 8.00
    ),
    ("bert", "eager", "amp-bf16", False): HfBytes(
        28.00, 36.00, 0.00, 0.00, 76.3333, 134.3333, 4.00, 8.00
    ),
    ("bert", "eager", "fp16", True): HfBytes(
        17.00, 23.00, 0.00, 0.00, 46.1667, 72.1667, 4.00, 8.00
    ),
    ("bert", "eager", "fp16", False): HfBytes(
        12.00, 18.00, 0.00, 0.00, 36.1667, 62.1667, 4.00, 8.00
    ),
    ("bert", "eager", "bf16", True): HfBytes(
        17.00, 23.00, 0.00, 0.00, 46.1667, 72.1667, 4.00, 8.00
    ),
    ("bert", "eager", "bf16", False): HfBytes(
        12.00, 18.00, 0.00, 0.00, 36.1667, 62.1667, 4.00, 8.00
    ),
    ("bert", "eager", "fp32", True): HfBytes(
        33.00, 45.00, 0.00, 0.00, 90.3333, 142.3333, 8.00, 16.00
    ),
    ("bert", "eager", "fp32", False): HfBytes(
        24.00, 36.00, 0.00, 0.00, 72.3333, 124.3333, 8.00, 16.00
    ),
    ("bert", "sdpa", "amp-fp16", True): HfBytes(
        0.00, 0.00, 0.00, 0.00, 70.3333, 128.3333, 4.00, 8.00
    ),
    ("bert", "sdpa", "amp-fp16", False): HfBytes(
        0.00, 0.00, 0.00, 0.00, 60.3333, 118.3333, 4.00, 8.00
    ),
    ("bert", "sdpa", "amp-bf16", True): HfBytes(
        0.00, 0.00, 0.00, 0.00, 70.3333, 128.3333, 4.00, 8.00
    ),
    ("bert", "sdpa", "amp-bf16", False): HfBytes(
        0.00, 0.00, 0.00, 0.00, 60.3333, 118.3333, 4.00, 8.00
    ),
    ("bert", "sdpa", "fp16", True): HfBytes(0.00, 0.00, 0.00, 0.00, 30.1667, 56.1667, 4.00, 8.00),
    ("bert", "sdpa", "fp16", False): HfBytes(0.00, 0.00, 0.00, 0.00, 20.1667, 46.1667, 4.00, 8.00),
    ("bert", "sdpa", "bf16", True): HfBytes(0.00, 0.00, 0.00, 0.00, 30.1667, 56.1667, 4.00, 8.00),
    ("bert", "sdpa", "bf16", False): HfBytes(0.00, 0.00, 0.00, 0.00, 20.1667, 46.1667, 4.00, 8.00),
    ("bert", "sdpa", "fp32", True): HfBytes(0.00, 0.00, 0.00, 0.00, 58.3333, 110.3333, 8.00, 16.00),
    ("bert", "sdpa", "fp32", False): HfBytes(0.00, 0.00, 0.00, 0.00, 40.3333, 92.3333, 8.00, 16.00),
}

_LAYOUTS = {
    ModuleLayout.LLAMA: "llama",
    ModuleLayout.GPT2: "gpt2",
    ModuleLayout.OPT: "opt",
    ModuleLayout.BERT: "bert",
    # torchvision's ViT encoder block (pre-LN, nn.Linear, exact GELU, dropout): BERT's op mix
    # is the nearest measured one.
    ModuleLayout.VIT: "bert",
}
_MODES = {
    Precision.FP32: "fp32",
    Precision.TF32: "fp32",
    Precision.AMP_FP16: "amp-fp16",
    Precision.AMP_BF16: "amp-bf16",
    Precision.FP16_MIXED: "fp16",
    Precision.FP16: "fp16",
    # DeepSpeed/Megatron-style runs and FP8 run the HF module's own ops in bf16
    Precision.BF16_MIXED: "bf16",
    Precision.BF16: "bf16",
    Precision.FP8_MIXED: "bf16",
    Precision.MXFP8_MIXED: "bf16",
    Precision.NVFP4_MIXED: "bf16",
}


def hf_bytes(layout: ModuleLayout, eager: bool, precision: Precision, dropout: bool) -> HfBytes:
    """The measured bytes of one Hugging Face block.

    Args:
        layout: the module tree the model follows (GPT-2, Llama, OPT, BERT, ViT).
        eager: eager attention (matmul-softmax-matmul) rather than SDPA's fused kernels.
        precision: the precision recipe; it decides the dtypes (autocast or a 16-bit module).
        dropout: the model's own dropout is on (Llama's blocks have none).

    Returns:
        The row of :data:`HF_BYTES`.
    """
    name = _LAYOUTS[layout]
    key = (name, "eager" if eager else "sdpa", _MODES[precision], dropout and name != "llama")
    return HF_BYTES[key]
