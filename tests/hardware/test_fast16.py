"""The 16-bit GEMM verdict: interleaved ratios, a dead band around the threshold, the ISA check.

The measurement runs against a fake torch and a fake clock, so bursts of "load" land on
exactly the calls a test chooses and nothing here depends on this machine's real load.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest

from advisor.hardware import fast16
from advisor.hardware.fast16 import (
    Spread,
    Verdict,
    check_gemms,
    contradicts,
    decide,
    isa_expectation,
)

AVX512_BF16 = {"avx2", "avx512f", "avx512_bf16"}
AVX2_ONLY = {"avx2", "fma"}


@dataclass
class FakeClock:
    now: float = 0.0
    cpu: float = 0.0

    def perf_counter(self) -> float:
        return self.now

    def process_time(self) -> float:
        return self.cpu


@dataclass
class FakeTorch:
    """mm advances the clock by its dtype's cost; ``burst`` multiplies chosen calls (load)."""

    clock: FakeClock
    cost: dict[str, float]
    burst: Any = None  # (call index, dtype) -> factor
    threads: int = 2
    calls: list[str] = field(default_factory=list)
    float32, bfloat16, float16 = "fp32", "bf16", "fp16"

    def get_num_threads(self) -> int:
        return self.threads

    def set_num_threads(self, n: int) -> None:
        self.threads = n

    def randn(self, *shape: int, device: str = "cpu") -> _Mat:
        return _Mat("fp32")

    def mm(self, a: _Mat, b: _Mat) -> None:
        factor = self.burst(len(self.calls), a.dtype) if self.burst else 1.0
        self.calls.append(a.dtype)
        dt = self.cost[a.dtype] * factor
        self.clock.now += dt
        # Under load the process gets the CPU for the undisturbed part of the call only.
        self.clock.cpu += self.cost[a.dtype] * self.threads


@dataclass
class _Mat:
    dtype: str

    def to(self, dtype: str) -> _Mat:
        return _Mat(dtype)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(fast16, "time", c)
    return c


def test_isa_expectation_reads_the_x86_flags() -> None:
    assert isa_expectation(AVX512_BF16, "x86_64") == {"bf16": True, "fp16": False}
    assert isa_expectation(AVX2_ONLY, "x86_64") == {"bf16": False, "fp16": False}
    assert isa_expectation({"avx512_fp16", "amx_bf16"}, "x86_64") == {"bf16": True, "fp16": True}
    # ARM's flags are left to the measurement; no flags read, nothing known.
    assert isa_expectation({"asimdhp", "bf16"}, "aarch64") == {"bf16": None, "fp16": None}
    assert isa_expectation(set(), "x86_64") == {"bf16": None, "fp16": None}


@pytest.mark.parametrize(
    ("spread", "isa", "expected"),
    [
        # Clear of the dead band: the measurement decides.
        (Spread(3.6, 4.0, 4.6, 7), True, Verdict(True, "measured")),
        (Spread(0.004, 0.005, 0.006, 7), False, Verdict(False, "measured")),
        (Spread(0.004, 0.005, 0.006, 7), None, Verdict(False, "measured")),
        (Spread(1.1, 1.2, 1.3, 7), None, Verdict(True, "measured")),
    ],
)
def test_a_decisive_spread_decides(spread: Spread, isa: bool | None, expected: Verdict) -> None:
    assert decide("bf16", spread, isa) == expected


def test_a_spread_near_the_threshold_defers_to_the_isa_every_time() -> None:
    # fp16 with AVX512-FP16 measured 0.84-0.93x fp32 here: the same verdict whichever side.
    for low, high in ((0.84, 0.89), (0.88, 0.93), (0.91, 0.96)):
        verdict = decide("fp16", Spread(low, (low + high) / 2, high, 7), True)
        assert verdict.fast is True and verdict.source.startswith("isa flags")
    verdict = decide("fp16", Spread(0.85, 0.95, 1.2, 7), None)
    assert verdict.fast is False and "too near" in verdict.source and not verdict.note


def test_a_spread_the_isa_rules_out_is_not_believed() -> None:
    # The reported failure: bf16 at 1/13 of fp32 on a CPU with avx512_bf16.
    slow = Spread(0.07, 0.076, 0.08, 7)
    assert contradicts(slow, True)
    verdict = decide("bf16", slow, True)
    assert verdict == Verdict(True, "isa flags", verdict.note) and "rules out" in verdict.note
    # fp16 "fast" on a CPU without AVX512-FP16/AMX-FP16 (an fp32 call lost to load).
    assert decide("fp16", Spread(1.2, 1.4, 1.5, 7), False).fast is False


def test_rounds_rotate_so_every_dtype_leads_in_turn(clock: FakeClock) -> None:
    torch = FakeTorch(clock, {"fp32": 1e-3, "bf16": 3e-4, "fp16": 5e-2})
    fns = {d: (lambda d=d: torch.mm(_Mat(d), _Mat(d))) for d in ("fp32", "bf16", "fp16")}
    times, disturbance = fast16.time_rounds(fns, lambda: None, rounds=3, threads=2)
    assert torch.calls == ["fp32", "bf16", "fp16", "bf16", "fp16", "fp32", "fp16", "fp32", "bf16"]
    assert times["fp16"] == [5e-2] * 3 and disturbance == 0.0


def _gemm_torch(clock: FakeClock, burst: Any = None) -> FakeTorch:
    # Costs of a 256^3 GEMM on one thread of an AVX512-BF16 CPU: bf16 ~4x fp32, fp16 emulated.
    return FakeTorch(clock, {"fp32": 2.0e-4, "bf16": 5.0e-5, "fp16": 1.5e-2}, burst=burst)


def test_the_verdict_survives_bursts_of_load(clock: FakeClock) -> None:
    quiet = check_gemms(_gemm_torch(clock), flags=AVX512_BF16)
    # Every third call is slowed 20x: the old single timed call of bf16 read 1/13 of fp32.
    noisy = itertools.cycle([1.0, 1.0, 20.0])
    busy = check_gemms(_gemm_torch(clock, burst=lambda i, d: next(noisy)), flags=AVX512_BF16)
    for check in (quiet, busy):
        assert check.verdicts["bf16"] == Verdict(True, "measured")
        assert check.verdicts["fp16"] == Verdict(False, "measured")
    assert quiet.disturbance == 0.0 and busy.disturbance > 0.3
    assert quiet.spreads["bf16"].median == pytest.approx(4.0)


def test_a_contradiction_is_measured_again_then_left_to_the_isa(clock: FakeClock) -> None:
    # bf16 13x slower than fp32 in every round, on a CPU whose flags say it has the kernels.
    torch = FakeTorch(clock, {"fp32": 2.0e-4, "bf16": 2.6e-3, "fp16": 1.5e-2})
    check = check_gemms(torch, flags=AVX512_BF16)
    assert check.attempts == fast16.MAX_ATTEMPTS
    assert check.verdicts["bf16"].fast is True
    assert check.verdicts["bf16"].source == "isa flags"
    assert any("rules out" in n for n in check.notes)


def test_the_check_runs_on_one_thread_and_restores_the_count(clock: FakeClock) -> None:
    torch = _gemm_torch(clock)
    seen: list[int] = []
    real_mm = torch.mm

    def mm(a: _Mat, b: _Mat) -> None:
        seen.append(torch.threads)
        real_mm(a, b)

    torch.mm = mm  # type: ignore[method-assign]
    check_gemms(torch, flags=AVX512_BF16)
    assert set(seen) == {1} and torch.threads == 2
