"""The host's time of an eager step on a GPU: every ATen op a step dispatches costs the host
Python, autograd and the dispatcher, and every op that launches device work a CUDA launch;
when a device's kernels are shorter than that the device waits for the host. A micro-batch
takes max(device time, host time), and so does the optimizer step.

The op counts are measured (``benchmarks/host_ops.py``, ``benchmarks/results/host_ops.json``:
Hugging Face ``transformers`` models and ``torch.optim.AdamW`` under a ``TorchDispatchMode``);
the tables below are those counts, and ``tests/cost/test_host.py`` checks them against the
stored measurement (and, marked heavy, re-measures them).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from advisor.config import LORA_MATRICES, Attention, Checkpointing, Precision, Stack, Task
from advisor.cost.result import ComponentTime, Source
from advisor.cost.setting import Setting
from advisor.hardware.profiles import DeviceKind
from advisor.model.traits import ModuleLayout


class OpCount(NamedTuple):
    """ATen ops one pass dispatches: all of them, and those that launch a kernel on a GPU
    (all but views, aliases and allocations)."""

    all: int
    kernel: int


class OpRate(NamedTuple):
    """Ops per unit (a fitted share of a count: autocast's weight casts make LoRA's
    per-adapter ops differ slightly between target sets)."""

    all: float
    kernel: float


class PassOps(NamedTuple):
    """Ops of one block (or of the rest: embeddings, final norm, LM head and loss), forward
    and backward together and forward alone."""

    step: OpCount
    forward: OpCount


# fmt: off
# (layout, attention, dropout, autocast) -> (block, rest): measured with transformers 5.25 and
# torch 2.13 by `python -m benchmarks.host_ops` (benchmarks/results/host_ops.json, "models").
# attention: eager (matmul-softmax-matmul) or sdpa; dropout: none, all (hidden states and
# attention probabilities) or hidden (the hidden states only: what SDPA's fused kernels launch
# on a GPU, where the attention dropout runs inside the kernel); autocast: the forward under
# bf16 autocast (amp-bf16 / amp-fp16).
_MODEL_OPS: dict[tuple[str, str, str, bool], tuple[PassOps, PassOps]] = {
    ("gpt2", "eager", "none", False): (
        PassOps(OpCount(151, 64), OpCount(57, 25)),
        PassOps(OpCount(68, 31), OpCount(45, 21)),
    ),
    ("gpt2", "eager", "none", True): (
        PassOps(OpCount(176, 89), OpCount(68, 36)),
        PassOps(OpCount(74, 37), OpCount(48, 24)),
    ),
    ("gpt2", "eager", "all", False): (
        PassOps(OpCount(166, 76), OpCount(69, 34)),
        PassOps(OpCount(73, 35), OpCount(49, 24)),
    ),
    ("gpt2", "eager", "all", True): (
        PassOps(OpCount(191, 101), OpCount(80, 45)),
        PassOps(OpCount(79, 41), OpCount(52, 27)),
    ),
    ("gpt2", "sdpa", "none", False): (
        PassOps(OpCount(117, 50), OpCount(41, 19)),
        PassOps(OpCount(45, 21), OpCount(22, 11)),
    ),
    ("gpt2", "sdpa", "none", True): (
        PassOps(OpCount(139, 72), OpCount(51, 29)),
        PassOps(OpCount(51, 27), OpCount(25, 14)),
    ),
    ("gpt2", "sdpa", "all", False): (
        PassOps(OpCount(175, 83), OpCount(76, 40)),
        PassOps(OpCount(50, 25), OpCount(26, 14)),
    ),
    ("gpt2", "sdpa", "all", True): (
        PassOps(OpCount(206, 114), OpCount(91, 55)),
        PassOps(OpCount(56, 31), OpCount(29, 17)),
    ),
    ("gpt2", "sdpa", "hidden", False): (
        PassOps(OpCount(127, 58), OpCount(49, 25)),
        PassOps(OpCount(50, 25), OpCount(26, 14)),
    ),
    ("gpt2", "sdpa", "hidden", True): (
        PassOps(OpCount(149, 80), OpCount(59, 35)),
        PassOps(OpCount(56, 31), OpCount(29, 17)),
    ),
    ("llama", "eager", "none", False): (
        PassOps(OpCount(252, 118), OpCount(93, 42)),
        PassOps(OpCount(89, 51), OpCount(55, 31)),
    ),
    ("llama", "eager", "none", True): (
        PassOps(OpCount(289, 155), OpCount(108, 57)),
        PassOps(OpCount(95, 57), OpCount(58, 34)),
    ),
    ("llama", "sdpa", "none", False): (
        PassOps(OpCount(219, 105), OpCount(77, 36)),
        PassOps(OpCount(66, 41), OpCount(32, 21)),
    ),
    ("llama", "sdpa", "none", True): (
        PassOps(OpCount(253, 139), OpCount(91, 50)),
        PassOps(OpCount(72, 47), OpCount(35, 24)),
    ),
    ("opt", "eager", "none", False): (
        PassOps(OpCount(177, 59), OpCount(60, 21)),
        PassOps(OpCount(69, 34), OpCount(48, 25)),
    ),
    ("opt", "eager", "none", True): (
        PassOps(OpCount(214, 96), OpCount(77, 38)),
        PassOps(OpCount(75, 40), OpCount(51, 28)),
    ),
    ("opt", "eager", "all", False): (
        PassOps(OpCount(192, 71), OpCount(72, 30)),
        PassOps(OpCount(69, 34), OpCount(48, 25)),
    ),
    ("opt", "eager", "all", True): (
        PassOps(OpCount(229, 108), OpCount(89, 47)),
        PassOps(OpCount(75, 40), OpCount(51, 28)),
    ),
    ("opt", "sdpa", "none", False): (
        PassOps(OpCount(142, 44), OpCount(44, 15)),
        PassOps(OpCount(46, 24), OpCount(25, 15)),
    ),
    ("opt", "sdpa", "none", True): (
        PassOps(OpCount(176, 78), OpCount(60, 31)),
        PassOps(OpCount(52, 30), OpCount(28, 18)),
    ),
    ("opt", "sdpa", "all", False): (
        PassOps(OpCount(201, 78), OpCount(79, 36)),
        PassOps(OpCount(46, 24), OpCount(25, 15)),
    ),
    ("opt", "sdpa", "all", True): (
        PassOps(OpCount(244, 121), OpCount(100, 57)),
        PassOps(OpCount(52, 30), OpCount(28, 18)),
    ),
    ("opt", "sdpa", "hidden", False): (
        PassOps(OpCount(152, 52), OpCount(52, 21)),
        PassOps(OpCount(46, 24), OpCount(25, 15)),
    ),
    ("opt", "sdpa", "hidden", True): (
        PassOps(OpCount(186, 86), OpCount(68, 37)),
        PassOps(OpCount(52, 30), OpCount(28, 18)),
    ),
    ("bert", "eager", "none", False): (
        PassOps(OpCount(170, 54), OpCount(57, 19)),
        PassOps(OpCount(68, 30), OpCount(25, 13)),
    ),
    ("bert", "eager", "none", True): (
        PassOps(OpCount(204, 88), OpCount(73, 35)),
        PassOps(OpCount(80, 42), OpCount(31, 19)),
    ),
    ("bert", "eager", "all", False): (
        PassOps(OpCount(185, 66), OpCount(69, 28)),
        PassOps(OpCount(73, 34), OpCount(29, 16)),
    ),
    ("bert", "eager", "all", True): (
        PassOps(OpCount(219, 100), OpCount(85, 44)),
        PassOps(OpCount(85, 46), OpCount(35, 22)),
    ),
    ("bert", "sdpa", "none", False): (
        PassOps(OpCount(134, 38), OpCount(40, 12)),
        PassOps(OpCount(68, 30), OpCount(25, 13)),
    ),
    ("bert", "sdpa", "none", True): (
        PassOps(OpCount(168, 72), OpCount(56, 28)),
        PassOps(OpCount(80, 42), OpCount(31, 19)),
    ),
    ("bert", "sdpa", "all", False): (
        PassOps(OpCount(189, 68), OpCount(71, 29)),
        PassOps(OpCount(73, 34), OpCount(29, 16)),
    ),
    ("bert", "sdpa", "all", True): (
        PassOps(OpCount(232, 111), OpCount(92, 50)),
        PassOps(OpCount(85, 46), OpCount(35, 22)),
    ),
    ("bert", "sdpa", "hidden", False): (
        PassOps(OpCount(144, 46), OpCount(48, 18)),
        PassOps(OpCount(73, 34), OpCount(29, 16)),
    ),
    ("bert", "sdpa", "hidden", True): (
        PassOps(OpCount(178, 80), OpCount(64, 34)),
        PassOps(OpCount(85, 46), OpCount(35, 22)),
    ),
}
# fmt: on

# The per-op host cost of the dispatch (Python module code, autograd, the dispatcher),
# seconds, per module layout: one forward + backward of each family at 1 token of width 64
# (the kernels negligible beside the dispatch) in one thread's CPU time over the ops it
# dispatched, on the build machine's CPU (a 2-core Intel Xeon server VM, load average ~7 from
# other work; benchmarks/results/host_ops.json, "dispatch_timing"). NOTE: measured on a
# server-class CPU, but not on a GPU host: an assumption that the host CPUs of GPU nodes
# dispatch at this speed (plus the launch below, which this CPU-only measurement lacks).
_DISPATCH_S: dict[str, float] = {
    "gpt2": 10.40e-6,
    "llama": 7.07e-6,
    "opt": 7.69e-6,
    "bert": 8.85e-6,
}
# The host's cost of one CUDA kernel launch (cudaLaunchKernel), seconds: "~1-3 us on CUDA 12+
# drivers" (From PyTorch op to kernel launch, https://jiahuanglin.xyz/all_lessons/
# gpu_kernel_serving/18_pytorch_to_kernel.html, the dispatch-chain table); the middle, 2 us.
# The same page puts the whole CPU-side path of one PyTorch op at ~5-25 us, which the
# dispatch measured here plus this launch (9-12 us) sits inside.
LAUNCH_S = 2.0e-6
# Kernels per Llama block, forward + backward, when the block is compiled (torch.compile's
# default mode, as torchtitan compiles each block; no CUDA graphs): Inductor's generated
# kernels plus the GEMM and SDPA calls it leaves to extern kernels (host_ops.json,
# "compiled_block"; counted with Inductor's CPU backend). The fused stack launches these.
_COMPILED_BLOCK_KERNELS = 53
# torch's multi-tensor kernels (foreach ops, fused Adam) take at most 36 tensors of a depth-4
# list (params, grads, exp_avg, exp_avg_sq) and 320 blocks of 65536 elements per launch
# (aten/src/ATen/native/cuda/MultiTensorApply.cuh: depth_to_max_tensors, kChunkSize,
# depth_to_max_blocks).
_MULTI_TENSOR_MAX = 36
_MULTI_TENSOR_ELEMENTS = 320 * 65536
# AdamW's ops per step (host_ops.json, "optimizers"): (per parameter tensor, per group);
# clip_grad_norm_ (foreach; Hugging Face's Trainer clips at max_grad_norm = 1.0 by default):
# fixed ops per step.
_ADAMW_OPS: dict[str, tuple[OpCount, OpCount]] = {
    "for-loop": (
        OpCount(10, 9),
        OpCount(2, 2),
    ),
    "foreach": (
        OpCount(2, 0),
        OpCount(12, 11),
    ),
    "fused": (
        OpCount(0, 0),
        OpCount(4, 4),
    ),
}
# bitsandbytes' 8-bit optimizers (host_ops.json, "bnb_optimizers": AdamW8bit and Lion8bit
# alike): a Python loop over the tensors, one blockwise update kernel each.
_BNB_OPS = (OpCount(2, 1), OpCount(2, 2))
_CLIP_OPS = OpCount(8, 8)
# PEFT LoRA (host_ops.json, "lora"; SDPA, no dropout): (the frozen block's ops, the ops one
# adapter adds), per layout and autocast; fitted exactly from two target sets (attention
# projections, every linear) of the same block. Layouts without a measurement take Llama's.
_LORA_OPS: dict[tuple[str, bool], tuple[OpRate, OpRate]] = {
    ("llama", False): (
        OpRate(176.00, 94.00),
        OpRate(30.00, 10.00),
    ),
    ("llama", True): (
        OpRate(202.33, 120.33),
        OpRate(36.67, 16.67),
    ),
    ("gpt2", False): (
        OpRate(89.00, 42.00),
        OpRate(30.00, 10.00),
    ),
    ("gpt2", True): (
        OpRate(101.67, 54.67),
        OpRate(37.33, 17.33),
    ),
}
# Tensors outside the blocks: token (and position) embeddings, the final norm's weight and
# bias, an untied LM head: at most four.
_OUTSIDE_TENSORS = 4

_HOST_KINDS = (DeviceKind.CUDA, DeviceKind.ROCM)
_LAYOUTS = {
    ModuleLayout.LLAMA: "llama",
    ModuleLayout.GPT2: "gpt2",
    ModuleLayout.OPT: "opt",
    ModuleLayout.BERT: "bert",
    # torchvision's ViT encoder block: pre-LN, nn.Linear projections, GELU, dropout: BERT's
    # op mix is the nearest measured one.
    ModuleLayout.VIT: "bert",
}


class HostTime(NamedTuple):
    """The host's seconds of one pass and what they are made of."""

    seconds: float
    ops: int
    launches: int


def applies(s: Setting) -> bool:
    """Whether this prediction prices the host: a GPU target (not a CPU, where the dispatch
    runs on the same cores as the kernels and calibration measures it) and a transformer."""
    return s.hw is not None and s.hw.kind in _HOST_KINDS and s.spec.cnn is None


def _key(s: Setting) -> tuple[str, str, str, bool]:
    layout = _LAYOUTS[s.spec.traits.layout]
    attention = "eager" if s.mb.attention is Attention.EAGER else "sdpa"
    dropout = "none"
    if s.mb.dropout and layout != "llama":
        dropout = "all" if attention == "eager" else "hidden"
    autocast = s.mb.precision in (Precision.AMP_BF16, Precision.AMP_FP16)
    return layout, attention, dropout, autocast


def adapted_matrices(layout: str, targets: tuple[str, ...]) -> int:
    """Linear modules LoRA adapts in one block: GPT-2's q, k and v are one ``c_attn`` and
    its up projection is ``c_fc``."""
    chosen = {t for t in targets if t in LORA_MATRICES}
    if layout == "gpt2":
        groups = ({"q", "k", "v"}, {"o"}, {"up", "gate"}, {"down"})
        return sum(1 for g in groups if g & chosen)
    return len(chosen)


def _lora_block(s: Setting, key: tuple[str, str, str, bool], block: OpCount) -> OpCount:
    """``block`` (the full-training count of ``key``) with the frozen base's missing weight
    gradients taken out and the adapters' ops added."""
    layout, _, _, autocast = key
    lora_key = (layout, autocast) if (layout, autocast) in _LORA_OPS else ("llama", autocast)
    frozen, per_adapter = _LORA_OPS[lora_key]
    full = _MODEL_OPS[(lora_key[0], "sdpa", "none", autocast)][0].step
    n = adapted_matrices(layout, s.mb.lora_targets)
    return OpCount(
        round(block.all - (full.all - frozen.all) + n * per_adapter.all),
        round(block.kernel - (full.kernel - frozen.kernel) + n * per_adapter.kernel),
    )


def micro_batch_host(s: Setting, zeroth: bool) -> HostTime | None:
    """The host's seconds of one micro-batch on the busiest stage (None where it is not
    priced). Eager (hf stack): every op the measured block and head dispatch; full
    recomputation re-runs each block's forward; zeroth-order runs two forwards. Fused stack:
    the compiled block's kernels, each at the dispatch + launch cost (an upper bound: a
    compiled wrapper calls its kernels without autograd)."""
    if not applies(s):
        return None
    key = _key(s)
    layout = key[0]
    block, rest = _MODEL_OPS[key]
    dispatch = _DISPATCH_S[layout]
    layers = s.stage_layers
    if s.mb.stack is Stack.FUSED:
        n = _COMPILED_BLOCK_KERNELS * layers
        ops = n + rest.step.all
        launches = n + rest.step.kernel
        return HostTime(ops * dispatch + launches * LAUNCH_S, round(ops), round(launches))
    if zeroth:
        per_block, head = block.forward, rest.forward
        reps = 2
    else:
        per_block, head = block.step, rest.step
        reps = 1
        if s.mb.task in (Task.LORA, Task.QLORA):
            # NOTE: QLoRA's 4-bit matmuls are counted as LoRA's 16-bit ones (not measured).
            per_block = _lora_block(s, key, per_block)
    ops = reps * (per_block.all * layers + head.all)
    launches = reps * (per_block.kernel * layers + head.kernel)
    if not zeroth and s.mb.checkpointing is Checkpointing.FULL:
        ops += block.forward.all * layers
        launches += block.forward.kernel * layers
    return HostTime(ops * dispatch + launches * LAUNCH_S, round(ops), round(launches))


def parameter_tensors(s: Setting) -> int:
    """Parameter tensors this device's optimizer steps: its pipeline stage's blocks and what
    lies outside them; under LoRA two per adapted matrix and the whole tensors trained
    beside them."""
    if s.mb.task in (Task.LORA, Task.QLORA):
        layout = _LAYOUTS[s.spec.traits.layout]
        per_block = 2 * adapted_matrices(layout, s.mb.lora_targets)
        whole = sum(1 for t in s.mb.lora_targets if t not in LORA_MATRICES)
        return math.ceil(per_block * s.sh.layers / s.pp) + whole
    in_blocks = sum(g.count * len(g.tensors) for g in s.spec.block.groups)
    return math.ceil(in_blocks / s.pp) + _OUTSIDE_TENSORS


def optimizer_impl(fused: bool, foreach: bool, quantized: bool) -> str:
    """Which measured implementation a step runs: bitsandbytes' 8-bit loop, torch's fused
    kernel, foreach ops, else a for-loop over the tensors (an optimizer with neither kernel:
    AdamW's for-loop count stands in for it)."""
    if quantized:
        return "bnb-8bit"
    return "fused" if fused else ("foreach" if foreach else "for-loop")


def optimizer_host(s: Setting, impl: str, local_params: float) -> HostTime | None:
    """The host's seconds of one optimizer step in implementation ``impl``
    (:func:`optimizer_impl`): its measured ops and, on the hf stack, Hugging Face's gradient
    clipping; a multi-tensor op launches one kernel per 36 tensors or per 21M elements,
    whichever needs more."""
    if not applies(s):
        return None
    n = parameter_tensors(s)
    per_tensor, per_group = _BNB_OPS if impl == "bnb-8bit" else _ADAMW_OPS[impl]
    ops = per_group.all + per_tensor.all * n
    launches = per_group.kernel + per_tensor.kernel * n
    if impl in ("fused", "foreach"):
        chunks = max(
            math.ceil(n / _MULTI_TENSOR_MAX), math.ceil(local_params / _MULTI_TENSOR_ELEMENTS)
        )
        launches = per_group.kernel * chunks + per_tensor.kernel * n
    if s.mb.stack is Stack.HF:
        ops += _CLIP_OPS.all
        launches += _CLIP_OPS.kernel * max(1, math.ceil(n / _MULTI_TENSOR_MAX))
    dispatch = _DISPATCH_S[_LAYOUTS[s.spec.traits.layout]]
    return HostTime(ops * dispatch + launches * LAUNCH_S, round(ops), round(launches))


def micro_batch_excess(s: Setting, zeroth: bool, device: float) -> ComponentTime | None:
    """What the host adds to one micro-batch whose device work takes ``device`` seconds:
    max(host, device) - device; None where the host's work hides behind the kernels (or is
    not priced)."""
    h = micro_batch_host(s, zeroth)
    if h is None or h.seconds <= device:
        return None
    stack = "compiled" if s.mb.stack is Stack.FUSED else "eager"
    return ComponentTime(
        seconds=h.seconds - device,
        source=Source.ANALYTIC,
        detail=f"host-bound {stack} launches: {h.ops} ops ({h.launches} kernels), "
        f"{h.seconds * 1e3:.2f} ms of host per micro-batch vs {device * 1e3:.2f} ms of "
        "device work",
    )


def with_optimizer_excess(
    s: Setting,
    current: ComponentTime | None,
    impl: str,
    local_params: float,
    device: float,
) -> ComponentTime | None:
    """``current`` (the micro-batches' host excess, scaled to the step) plus the optimizer
    step's own: max(host, device) - device of the step that takes ``device`` seconds."""
    h = optimizer_host(s, impl, local_params)
    if h is None or h.seconds <= device:
        return current
    excess = h.seconds - device
    note = (
        f"optimizer step {h.ops} ops ({h.launches} kernels), {h.seconds * 1e3:.2f} ms of host "
        f"vs {device * 1e3:.2f} ms of device work"
    )
    if current is None:
        return ComponentTime(seconds=excess, source=Source.ANALYTIC, detail=note)
    return ComponentTime(
        seconds=current.seconds + excess,
        source=Source.ANALYTIC,
        detail=f"{current.detail}; {note}",
    )
