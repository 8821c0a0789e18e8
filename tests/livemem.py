"""Peak tracking of live tensor bytes on the CPU: every storage an op creates, until it dies.

CPU tensors have no ``max_memory_allocated``; a dispatch mode sees every op's outputs, and a
finalizer on each new storage sees it freed. The running sum is the bytes alive, its maximum
the peak, so a whole training step can be compared with the memory model's phases.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytes(TorchDispatchMode):  # type: ignore[misc]
    """Counts the bytes of CPU storages created under it while they stay alive."""

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def hold(self, tensors: Any) -> None:
        """Count nothing for these tensors' storages (alive before the mode, e.g. parameters
        that in-place and view ops return)."""
        for t in tensors:
            self._live.setdefault(t.untyped_storage().data_ptr(), 0)

    def reset_peak(self) -> None:
        """Start a new peak from what is alive now."""
        self.peak = self.current

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self._live:
                    self._live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key)
        return out


def autocast_weight_copies(model: Any, ids: Any) -> tuple[int, int]:
    """One bf16-autocast forward of an HF causal LM: the bytes of 16-bit weight casts that
    autograd saves, and the bytes freed when the autocast region exits (its cache).

    A saved cast is a bf16 tensor of a weight's shape or its transpose: ``ids`` must make
    no activation share one (e.g. 3 x 32 tokens for a hidden size of 64).
    """
    shapes = {sh for p in model.parameters() for sh in (tuple(p.shape), tuple(p.shape)[::-1])}
    saved: dict[int, int] = {}

    def pack(t: Any) -> Any:
        if t.dtype == torch.bfloat16 and tuple(t.shape) in shapes:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with LiveBytes() as live, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            gc.collect()  # storages die with their last reference, cycles included
            inside = live.current
        gc.collect()
        freed_at_exit = inside - live.current
        del loss
    return sum(saved.values()), freed_at_exit


class ChunkedLinearCrossEntropy(torch.autograd.Function):  # type: ignore[misc]
    """The fused linear cross-entropy algorithm (Liger, Hsu et al. 2024) in plain PyTorch.

    The LM head and the loss run chunk by chunk of tokens; each chunk's gradients with respect
    to the hidden states and the head weight are computed in the forward, so neither the full
    logits nor their gradient ever exist. Chunk size as Liger picks it:
    ``next_pow2(ceil(t / ceil(V / h)))``.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> Any:
        t, h = hidden.shape
        v = weight.shape[0]
        inc = -(-v // h)
        chunk = 1 << max(0, (-(-t // inc) - 1).bit_length())
        chunk = min(chunk, t)
        grad_input = torch.zeros_like(hidden)
        grad_weight = torch.zeros_like(weight)
        loss = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, t, chunk):
            x = hidden[start : start + chunk]
            y = target[start : start + chunk]
            logits = (x @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            loss += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
            # softmax - one_hot, in place: the gradient of the summed loss for these tokens
            logits.sub_(lse[:, None]).exp_()
            logits[torch.arange(len(y)), y] -= 1
            g = logits.div_(t).to(hidden.dtype)
            grad_input[start : start + chunk] = g @ weight
            grad_weight.addmm_(g.t(), x)
            del logits, lse, g  # before the next chunk's are made
        ctx.save_for_backward(grad_input, grad_weight)
        return loss / t

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Any:
        grad_input, grad_weight = ctx.saved_tensors
        return grad_input * grad_out, grad_weight * grad_out, None
