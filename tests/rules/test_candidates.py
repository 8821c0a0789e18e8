"""Which attention kernel a plain plan gets, by the hardware (advisor.rules.candidates).

Facts: FlashAttention-2's CUDA kernels need sm80 or newer (Dao 2023; the taxonomy's
flash-attention entry); PyTorch's memory-efficient SDPA kernel (cutlass, from xFormers) runs
from sm50; the math path runs anywhere. A T4 is sm75 (Turing), a V100 sm70 (Volta), an A100
sm80, an H100 sm90, an RTX 4090 sm89 (NVIDIA's CUDA GPU compute capability table).
"""

from __future__ import annotations

import pytest

from advisor.config import Attention
from advisor.hardware.profiles import DeviceKind, load_hardware_profiles
from advisor.rules.candidates import ATTENTION_IDS, hardware_runs, runnable_attention
from advisor.rules.taxonomy import load_taxonomy

TAXONOMY = load_taxonomy()
PROFILES = load_hardware_profiles()


@pytest.mark.parametrize(
    ("hw_id", "kernel"),
    [
        ("t4", Attention.MEM_EFFICIENT),
        ("colab-t4", Attention.MEM_EFFICIENT),
        ("kaggle-t4x2", Attention.MEM_EFFICIENT),
        ("v100-32gb", Attention.MEM_EFFICIENT),
        ("a100-sxm-80gb", Attention.FLASH),
        ("rtx-3090", Attention.FLASH),
        ("rtx-4090", Attention.FLASH),
        ("h100-sxm-80gb", Attention.FLASH),
    ],
)
def test_the_kernel_a_gpu_runs_follows_its_compute_capability(
    hw_id: str, kernel: Attention
) -> None:
    p = PROFILES[hw_id]
    assert runnable_attention(TAXONOMY, p.kind, p.cc) is kernel


def test_below_sm50_only_the_math_path_is_left() -> None:
    # Kepler (sm35) has neither the flash nor the cutlass kernels.
    assert runnable_attention(TAXONOMY, DeviceKind.CUDA, 3.5) is Attention.EAGER


def test_requirements_bind_on_cuda_only_and_by_device_kind() -> None:
    flash = TAXONOMY.get(ATTENTION_IDS[Attention.FLASH])
    efficient = TAXONOMY.get(ATTENTION_IDS[Attention.MEM_EFFICIENT])
    # The CPU has a flash SDPA kernel but no memory-efficient one (measured, FINDINGS.md).
    assert hardware_runs(flash, DeviceKind.CPU, 0.0)
    assert not hardware_runs(efficient, DeviceKind.CPU, 0.0)
    assert runnable_attention(TAXONOMY, DeviceKind.CPU, 0.0) is Attention.FLASH
    assert not hardware_runs(flash, DeviceKind.CUDA, 7.5)
    assert hardware_runs(efficient, DeviceKind.CUDA, 7.0)
    assert hardware_runs(flash, DeviceKind.CUDA, 8.0)
