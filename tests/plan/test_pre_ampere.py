"""Pre-Ampere GPUs (T4: Turing, cc 7.5; V100: Volta, cc 7.0) and the free-tier T4s.

Facts: neither has a bf16 tensor path nor runs FlashAttention-2 (sm80+, Dao 2023); both run
PyTorch's memory-efficient SDPA kernel (sm50+) and fp16 with dynamic loss scaling
(Micikevicius et al. 2018). bitsandbytes' 4-bit layers compute in fp16 or bf16
(Linear4bit's compute_dtype), so QLoRA runs on a T4: the standard Colab recipe. Colab's free
runtime has 12.7 GB of RAM and one T4 showing 15 GiB (ECC on).
"""

from __future__ import annotations

import pytest

from advisor.config import Attention, Precision, Task
from advisor.plan.space import host_usable, usable_memory
from tests.plan.scenarios import searched

_BF16 = {Precision.BF16, Precision.BF16_MIXED, Precision.AMP_BF16, Precision.TF32}


@pytest.mark.parametrize(
    ("model", "hardware", "task"),
    [
        ("llama-3.1-8b", "t4", Task.QLORA),
        ("llama-3.1-8b", "t4", Task.FINETUNE),
        # An 8B model's 16-bit base alone (16 GB) exceeds a T4: LoRA on a 3B one.
        ("llama-3.2-3b", "t4", Task.LORA),
        ("llama-3.1-8b", "v100-32gb", Task.QLORA),
        ("llama-3.1-8b", "v100-32gb", Task.LORA),
        ("llama-3.1-8b", "v100-32gb", Task.FINETUNE),
    ],
)
def test_every_task_has_plans_with_the_kernels_the_gpu_runs(
    model: str, hardware: str, task: Task
) -> None:
    s = searched(model, hardware, task=task)
    assert s.rows, f"nothing fits for {task.value} on {hardware}"
    for row in s.rows:
        c = row.plan.config
        assert c.kernels.attention is not Attention.FLASH, c
        assert c.precision not in _BF16, c
    if task is not Task.FINETUNE:
        assert all(r.plan.config.task is task for r in s.rows)


def test_qlora_on_colabs_free_t4_fits_in_fp16_with_a_non_flash_kernel() -> None:
    s = searched("llama-3.1-8b", "colab-t4", task=Task.QLORA)
    assert s.rows
    pick = s.rows[0].plan
    c = pick.config
    assert c.task is Task.QLORA
    assert c.precision in (Precision.FP16_MIXED, Precision.AMP_FP16, Precision.FP16)
    assert c.kernels.attention in (Attention.MEM_EFFICIENT, Attention.EAGER)
    assert pick.peak_bytes <= usable_memory(s.ctx.target)
    # Whatever is offloaded (activations, states) fits the 12.7 GB host.
    host = s.ctx.target.host_memory_bytes
    assert host < 13 * 2**30
    for row in s.rows:
        m = row.plan.memory
        assert m.host_bytes <= host_usable(s.ctx.target), row.plan.config


def test_qlora_keeps_bf16_compute_where_the_gpu_has_it() -> None:
    # Dettmers et al. 2023 compute in bf16; fp16 compute is the fallback without bf16.
    s = searched("llama-3.1-8b", "rtx-4090", task=Task.QLORA)
    assert s.rows
    assert all(r.plan.config.precision not in _FP16 for r in s.rows)
    t4 = searched("llama-3.1-8b", "t4", task=Task.QLORA)
    assert t4.rows and all(r.plan.config.precision in _FP16 for r in t4.rows)


_FP16 = {Precision.AMP_FP16, Precision.FP16_MIXED, Precision.FP16}
