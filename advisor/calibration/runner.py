"""Run a calibration: real layer, attention, optimizer and roofline timings on one device."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psutil

from advisor import notes as user_notes
from advisor.calibration import cache as cal_cache
from advisor.calibration.optimizers import OPTIMIZERS, QUICK, Variant, missing_packages, skip_notes
from advisor.calibration.timing import (
    CpuShare,
    is_out_of_memory,
    measure,
    measure_interleaved,
    synchronizer,
)
from advisor.cost import block_gemms, layer_shape
from advisor.cost.data import (
    DISTURBED_SHARE,
    AttentionFit,
    CalibrationCache,
    GemmTiming,
    LayerShape,
    LayerTiming,
    OptimizerTiming,
    ShapeResults,
    Timing,
)
from advisor.errors import UserError
from advisor.hardware.fast16 import Spread, check_gemms, decide, load_average, time_rounds
from advisor.model.spec import ModelSpec
from advisor.torchload import import_torch

Progress = Callable[[str, float], None]
_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# Seconds one timed call of a layer should take: long enough to time, short enough to repeat.
_TARGET_CALL_S = {"quick": 0.25, "full": 1.0}
_SEQ_LENS = {"quick": [128, 256, 512, 1024], "full": [256, 512, 1024, 2048, 4096]}
_REPEATS = 5
# Interleaved rounds of the one-thread against all-threads GEMM (each side's fastest kept).
_SPEEDUP_ROUNDS = 7
# Token counts (GEMM rows) at which a GPU calibration times the block's GEMMs: efficiency
# saturates in the token count, so a geometric sweep spans the regimes.
GEMM_TOKENS = {"quick": [512, 2048, 8192], "full": [256, 1024, 4096, 16384]}
# Quick mode times optimizers on at most this many parameters of one layer.
QUICK_MAX_LAYER_PARAMS = 32_000_000
# Quick mode stops after this many seconds unless --budget says otherwise.
QUICK_DEFAULT_BUDGET_S = 120.0


class _Budget:
    """Stops the run cleanly when its time is spent; what was measured is kept."""

    def __init__(self, seconds: float | None) -> None:
        self.start = time.perf_counter()
        self.seconds = seconds
        self.exhausted = False

    def left(self) -> float:
        if self.seconds is None:
            return math.inf
        return self.seconds - (time.perf_counter() - self.start)

    def ok(self) -> bool:
        if self.left() <= 0:
            self.exhausted = True
        return not self.exhausted


def run_calibration(
    spec: ModelSpec,
    *,
    device: str = "cpu",
    mode: str = "quick",
    budget_s: float | None = None,
    force: bool = False,
    progress: Progress | None = None,
    optimizers: tuple[str, ...] | None = None,
    seq_lens: list[int] | None = None,
    say: Callable[[str], None] | None = None,
) -> CalibrationCache:
    """Measure this device for ``spec``'s layer shape and update the device's cache.

    Args:
        spec: the target model (its true widths are timed).
        device: cpu, cuda:N or mps.
        mode: quick (a representative subset, about a minute at most) or full.
        budget_s: stop after this many seconds and keep partial results.
        force: measure again even when the cache holds this shape.
        progress: called with (what is being measured, fraction done).
        optimizers: override the optimizer ids to time (tests use a few).
        seq_lens: override the attention sequence lengths.
        say: shows one line to the user at once (default: advisor.notes, shown at the end);
            the optimizers a missing optional package keeps from being timed are said
            through it before anything is measured.

    Returns:
        The device's cache (also written to disk, atomically).

    Raises:
        UserError: for an unknown mode or an unavailable device.
        KeyboardInterrupt: passed on after leaving the previous cache untouched.
    """
    if mode not in ("quick", "full"):
        raise UserError(f"invalid calibration mode {mode!r}", "use --quick or --full")
    torch = import_torch()
    _check_device(torch, device)
    gpu_name = torch.cuda.get_device_name(device) if device.startswith("cuda") else ""
    fp = cal_cache.device_fingerprint(device, gpu_name=gpu_name)
    old, warning = cal_cache.load_cache(fp)
    shape = layer_shape(spec)
    if old is not None and not force and not old.partial:
        cached = old.results_for(shape)
        if cached is not None:
            return old
    # --- Optional packages (issue 25) ---------------------------------------------------
    # The optimizers whose package is not installed (pytorch-optimizer) are said in one line
    # per package before anything is measured, and left out of the run: never built, so
    # never reported one by one as unsupported afterwards. The line stays in the cache's
    # warnings, so `calibrate show` says why they have no timing.
    ids = optimizers or (QUICK if mode == "quick" else tuple(OPTIMIZERS))
    skip_lines = skip_notes(ids, device)
    not_timed = {oid for oids in missing_packages(ids, device).values() for oid in oids}
    ids = tuple(oid for oid in ids if oid not in not_timed)
    for line in skip_lines:
        if say is not None:
            say(line)
        else:
            user_notes.post(line)
    # -------------------------------------------------------------------------------------
    report: Progress = progress or (lambda label, fraction: None)
    if budget_s is None and mode == "quick":
        budget_s = QUICK_DEFAULT_BUDGET_S
    budget = _Budget(budget_s)
    share = CpuShare()
    load = load_average()
    started = time.perf_counter()
    sync = synchronizer(torch, device)
    warnings = ([warning] if warning else []) + skip_lines
    lens = seq_lens or _SEQ_LENS[mode]
    steps = (
        3 + 2 + len(ids) + (1 if mode == "full" else 0) + (2 if device.startswith("cuda") else 0)
    )
    done = 0

    def tick(label: str) -> None:
        nonlocal done
        report(label, done / steps)
        done += 1

    tick("memory bandwidth")
    copy_gb_s = _copy_bandwidth(torch, device, sync)
    # NOTE: on the CPU everything compared is timed on one thread, then scaled by the measured
    # speed-up of the threads training uses: two OpenMP threads on two shared cores stall at
    # their barriers whenever another process holds a core (a 768-wide block measured 0.5 s
    # for 64 tokens, with an IQR as large), while one thread is only time-sliced, alike for
    # every variant. The ranking rests on the one-thread ratios; the speed-up sets the
    # absolute times, and a busy machine can only make it smaller (times then err long).
    threads = int(torch.get_num_threads()) if device == "cpu" else 1
    speedup = _thread_speedup(torch, shape, threads) if threads > 1 else 1.0
    with _threads(torch, 1 if threads > 1 else None):
        tick("GEMM throughput per dtype")
        measured = _gemm(torch, device, sync, shape)
        gemm, fast_bf16 = measured.gflops, measured.fast_bf16
        warnings.extend(measured.notes)
        # Every dtype that may be fast gets its block and attention timed, interleaved with the
        # others: pricing one dtype from a measured block and another from a bare GEMM compares
        # unlike things (a busy machine once made amp-fp16 look cheaper than bf16 that way).
        dtypes = (
            ["fp32"]
            + (["bf16"] if fast_bf16 is not False else [])
            + (["fp16"] if measured.fast_fp16 is not False else [])
        )
        if fast_bf16 is False and device == "cpu":
            warnings.append(
                f"bf16 GEMM runs at {gemm.get('bf16', 0):.3g} GFLOP/s"
                f" vs fp32 {gemm.get('fp32', 0):.3g}:"
                " bf16 paths were not timed on this CPU"
            )
        tick("layer forward+backward")
        layers, notes = _time_layers(torch, device, sync, shape, dtypes, mode, budget)
        tick(f"attention {', '.join(dtypes)}")
        attention = (
            _time_attention(torch, device, sync, shape, dtypes, lens, budget) if budget.ok() else []
        )
        tick("attention done")
        timings: list[OptimizerTiming] = []
        for oid in ids:
            tick(f"optimizer {oid}")
            if not budget.ok():
                timings.append(
                    OptimizerTiming(optimizer=oid, status="skipped", detail="budget spent")
                )
                continue
            timings.extend(_time_optimizer(torch, device, sync, spec, shape, oid, budget, mode))
    if speedup != 1.0:
        gemm = {k: round(v * speedup, 2) for k, v in gemm.items()}
        layers = [_faster_layer(lt, speedup) for lt in layers]
        attention = [_faster_fit(a, speedup) for a in attention]
        timings = [_faster_step(t, speedup) for t in timings]
        notes.append(
            f"timed on 1 thread, scaled by the measured {threads}-thread speed-up {speedup:.2f}"
        )
    gemms: list[GemmTiming] = []
    collectives: dict[str, float] = {}
    ranks = 0
    if device.startswith("cuda") and budget.ok():
        tick("GEMMs at the model's layer shapes")
        for dtype in [d for d in dtypes if d != "fp32"] or dtypes:
            found, note = time_gemm_shapes(
                torch, device, sync, spec, dtype, GEMM_TOKENS[mode], budget
            )
            gemms.extend(found)
            if note:
                notes.append(note)
        ranks = int(torch.cuda.device_count())
        if budget.ok():
            tick(f"NCCL collectives between {ranks} local GPU(s)")
            from advisor.calibration.allreduce import measure_collectives

            collectives, why = measure_collectives(device, ranks)
            if why:
                warnings.append(why)
    allreduce = None
    if mode == "full" and budget.ok():
        tick("all-reduce bandwidth (2 local processes)")
        from advisor.calibration.allreduce import measure_allreduce

        allreduce, why = measure_allreduce(device)
        if why:
            warnings.append(why)
    report("done", 1.0)
    other = share.other_share()
    loads = [x for x in (load, load_average()) if x is not None]
    if other is not None and other > DISTURBED_SHARE:
        warnings.append(
            f"other processes used {other:.0%} of the CPU while measuring: timings may be slow;"
            " run again on a quiet machine (--force)"
        )
    matmul = {k: v / 1000 for k, v in gemm.items()}
    new = CalibrationCache(
        fingerprint=fp,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        mode=mode,
        partial=budget.exhausted,
        seconds=round(time.perf_counter() - started, 2),
        fast_bf16=fast_bf16,
        gemm_gflops=gemm,
        copy_gb_s=copy_gb_s,
        allreduce_gb_s=allreduce,
        collectives=collectives,
        collective_ranks=ranks if collectives else 0,
        other_cpu_share=other,
        gemm_vs_fp32=measured.vs_fp32,
        thread_speedup=round(speedup, 3) if threads > 1 else None,
        disturbance=measured.disturbance,
        load_per_cpu=max(loads) if loads else None,
        shapes=[
            ShapeResults(
                shape=shape,
                layers=layers,
                attention=attention,
                optimizers=timings,
                matmul_tflops=matmul,
                gemms=gemms,
                notes=notes,
            )
        ],
        warnings=warnings,
    )
    return cal_cache.save_merged(old, new)


@contextlib.contextmanager
def _threads(torch: Any, n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block (None: unchanged)."""
    before = int(torch.get_num_threads())
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _thread_speedup(torch: Any, shape: LayerShape, threads: int) -> float:
    """How much faster a layer-shaped fp32 GEMM runs on ``threads`` threads than on one.

    Interleaved rounds, each side's fastest call: another process can only slow a call, so
    the fastest is the nearest to an undisturbed one. Clamped to 1..threads.
    """
    m, k, n = 256, min(shape.hidden, 4096), min(shape.intermediate, 8192)
    a, b = torch.randn(m, k), torch.randn(k, n)
    best = {1: math.inf, threads: math.inf}
    with _threads(torch, None):
        for r in range(_SPEEDUP_ROUNDS):
            for t in (1, threads) if r % 2 == 0 else (threads, 1):
                torch.set_num_threads(t)
                torch.mm(a, b)  # the first call at a thread count sets up its pool
                t0 = time.perf_counter()
                torch.mm(a, b)
                best[t] = min(best[t], time.perf_counter() - t0)
    return max(1.0, min(float(threads), best[1] / max(best[threads], 1e-12)))


def _faster(t: Timing, factor: float) -> Timing:
    return t.model_copy(update={"median_s": t.median_s / factor, "iqr_s": t.iqr_s / factor})


def _faster_layer(lt: LayerTiming, factor: float) -> LayerTiming:
    return lt.model_copy(
        update={
            "timing": _faster(lt.timing, factor),
            "forward": _faster(lt.forward, factor) if lt.forward is not None else None,
        }
    )


def _faster_fit(fit: AttentionFit, factor: float) -> AttentionFit:
    return fit.model_copy(
        update={
            "a": fit.a / factor,
            "b": fit.b / factor,
            "c": fit.c / factor,
            "seconds": [x / factor for x in fit.seconds],
        }
    )


def _faster_step(t: OptimizerTiming, factor: float) -> OptimizerTiming:
    def div(x: float | None) -> float | None:
        return None if x is None else x / factor

    return t.model_copy(
        update={
            "steady": _faster(t.steady, factor) if t.steady is not None else None,
            "first_step_s": div(t.first_step_s),
            "refresh_s": div(t.refresh_s),
            "amortised_s": div(t.amortised_s),
        }
    )


def _check_device(torch: Any, device: str) -> None:
    if device == "cpu":
        return
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                f"device {device} is not available: no CUDA GPU here", "use --device cpu"
            )
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UserError(
                f"device {device} does not exist", f"{torch.cuda.device_count()} GPU(s) found"
            )
        return
    if device == "mps":
        if not torch.backends.mps.is_available():
            raise UserError("device mps is not available", "use --device cpu")
        return
    raise UserError(f"invalid --device {device!r}", "use cpu, cuda:N or mps")


@dataclass
class _GemmResult:
    gflops: dict[str, float]
    fast_bf16: bool | None  # None: undecided, the target keeps its own answer
    fast_fp16: bool | None
    notes: list[str]
    disturbance: float | None
    vs_fp32: dict[str, list[float]]


def _gemm(torch: Any, device: str, sync: Any, shape: LayerShape) -> _GemmResult:
    """GFLOP/s of a layer-shaped GEMM (tokens x hidden @ hidden x intermediate) per dtype, and
    whether bf16 is fast (None: undecided, the target keeps its own answer).

    NOTE: on the CPU the fast/slow verdict comes from :func:`advisor.hardware.fast16.check_gemms`
    (interleaved, one thread, checked against the ISA), never from one timed call: a single
    call lost to another process made bf16 look 13x slower than fp32 on a busy machine. The
    dtypes found fast are then timed at the layer's shape with the threads training uses,
    interleaved (fastest of the rounds); a slow dtype keeps the check's figure, since timing
    an emulated GEMM at a 7B layer's shape would take minutes.
    """
    notes: list[str] = []
    m, k, n = 256, min(shape.hidden, 4096), min(shape.intermediate, 8192)
    fast: dict[str, bool | None] = {"fp32": True}
    out: dict[str, float] = {}
    disturbance = None
    vs_fp32: dict[str, list[float]] = {}
    if device == "cpu":
        check = check_gemms(torch, device=device, sync=sync)
        disturbance = check.disturbance
        notes.extend(check.notes)
        vs_fp32 = {
            d: [round(s.low, 3), round(s.median, 3), round(s.high, 3)]
            for d, s in check.spreads.items()
        }
        for d, verdict in check.verdicts.items():
            fast[d] = verdict.fast
            if not verdict.fast:
                out[d] = check.gflops[d]
    else:
        fast |= {"bf16": None, "fp16": None}
    fns = {}
    for name in ("fp32", "bf16", "fp16"):
        if fast.get(name) is False:
            continue
        dtype = getattr(torch, _DTYPES[name])
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        fns[name] = functools.partial(torch.mm, a, b)
        fns[name]()  # warm-up: the first call picks the kernel
    times, _ = time_rounds(fns, sync, rounds=_REPEATS)
    for name, ts in times.items():
        out[name] = round(2 * m * k * n / min(ts) / 1e9, 2)
    if fast["bf16"] is None and "bf16" in times:
        # A GPU: decide from the layer-shaped rounds; undecided stays None.
        spread = Spread.of([f / b for f, b in zip(times["fp32"], times["bf16"], strict=True)])
        verdict = decide("bf16", spread, None)
        fast["bf16"] = verdict.fast if verdict.source == "measured" else None
    return _GemmResult(
        gflops={d: out[d] for d in ("fp32", "bf16", "fp16") if d in out},
        fast_bf16=fast["bf16"],
        fast_fp16=fast["fp16"],
        notes=notes,
        disturbance=disturbance,
        vs_fp32=vs_fp32,
    )


def _copy_bandwidth(torch: Any, device: str, sync: Any) -> float:
    """GB/s of a large device copy (bytes read + bytes written)."""
    n = 32 * 1024 * 1024  # 128 MiB of fp32
    src = torch.empty(n, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    timing = measure(lambda: dst.copy_(src), sync, repeats=_REPEATS)
    return round(2 * n * 4 / timing.median_s / 1e9, 2)


def _block(torch: Any, shape: LayerShape, scale: float, device: str, dtype: Any) -> Any:
    """One transformer block without the attention core (projections, MLP, norms)."""
    nn = torch.nn
    h = max(64, int(shape.hidden * scale) // 64 * 64)
    f = max(64, int(shape.intermediate * scale) // 64 * 64)
    q = max(64, int(shape.heads * shape.head_dim * scale) // 64 * 64)
    kv = max(64, int(shape.kv_heads * shape.head_dim * scale) // 64 * 64)

    class Block(nn.Module):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.norm1 = nn.RMSNorm(h)
            self.q = nn.Linear(h, q, bias=False)
            self.k = nn.Linear(h, kv, bias=False)
            self.v = nn.Linear(h, kv, bias=False)
            self.o = nn.Linear(q, h, bias=False)
            self.norm2 = nn.RMSNorm(h)
            self.up = nn.Linear(h, f, bias=False)
            self.gate = nn.Linear(h, f, bias=False) if shape.gated_mlp else None
            self.down = nn.Linear(f, h, bias=False)

        def forward(self, x: Any) -> Any:
            y = self.norm1(x)
            # The attention core is timed on its own; here k and v are produced (their
            # cost is real) and q goes straight to the output projection.
            q_ = self.q(y)
            k_, v_ = self.k(y), self.v(y)
            x = x + self.o(q_) + 0 * (k_.sum() + v_.sum())
            y = self.norm2(x)
            a = self.up(y)
            a = (
                torch.nn.functional.silu(self.gate(y)) * a
                if self.gate is not None
                else torch.nn.functional.gelu(a)
            )
            return x + self.down(a)

    return Block().to(device=device, dtype=dtype)


@dataclass
class _Layer:
    """One dtype's block, ready to time."""

    fwd_bwd: Callable[[], None]
    forward: Callable[[], Any]
    tokens: int
    scale: float


def _prepare_layer(
    torch: Any,
    device: str,
    sync: Any,
    shape: LayerShape,
    dtype_name: str,
    mode: str,
    like: _Layer | None = None,
) -> tuple[_Layer | None, str]:
    """One dtype's block and input, sized to the time budget, or sized ``like`` another
    dtype's (the same widths and tokens, so their per-token times compare like with like)."""
    dtype = getattr(torch, _DTYPES[dtype_name])
    if like is not None:
        block = _block(torch, shape, like.scale, device, dtype)
        width = next(iter(block.parameters())).shape[0]
        try:
            x = torch.randn(1, like.tokens, width, device=device, dtype=dtype, requires_grad=True)
        except RuntimeError as exc:
            if is_out_of_memory(exc):
                return None, f"layer in {dtype_name}: does not fit ({exc.__class__.__name__})"
            raise
        return _layer(block, x, like.tokens, like.scale), ""
    params = (
        2 * shape.hidden * (shape.heads + shape.kv_heads) * shape.head_dim
        + (3 if shape.gated_mlp else 2) * shape.hidden * shape.intermediate
    )
    note = ""
    scale = 1.0
    # Memory: weights + grads in this dtype, plus activations; keep within 40% of free RAM.
    free = psutil.virtual_memory().available if device == "cpu" else _cuda_free(torch, device)
    need = params * 4 * 3
    if need > 0.4 * free:
        scale = math.sqrt(0.4 * free / need)
        note = (
            f"one true-width layer ({params / 1e6:.0f}M parameters) does not fit:"
            f" widths scaled by {scale:.2f}"
        )
    # Time: pick the token count so one call takes about the target time.
    block = _block(torch, shape, scale, device, dtype)
    x = torch.randn(1, 64, int(shape.hidden * scale) // 64 * 64 or 64, device=device, dtype=dtype)
    try:
        probe = measure(lambda: block(x).sum().backward(), sync, repeats=1, warmup=1)
    except RuntimeError as exc:
        if is_out_of_memory(exc):
            return None, f"layer in {dtype_name}: does not fit ({exc.__class__.__name__})"
        raise
    per_token = probe.median_s / 64
    tokens = int(_TARGET_CALL_S[mode] / max(per_token, 1e-9))
    tokens = max(64, min(2048, 2 ** int(math.log2(max(tokens, 64)))))
    if per_token * 64 > 4 * _TARGET_CALL_S[mode] and scale == 1.0:
        scale = math.sqrt(4 * _TARGET_CALL_S[mode] / (per_token * 64))
        note = (
            f"layer scaled by {scale:.2f} in width to fit the time budget"
            " (per-token cost scales with width²)"
        )
        block = _block(torch, shape, scale, device, dtype)
    width = next(iter(block.parameters())).shape[0]
    x = torch.randn(1, tokens, width, device=device, dtype=dtype, requires_grad=True)
    return _layer(block, x, tokens, scale), note


def _layer(block: Any, x: Any, tokens: int, scale: float) -> _Layer:
    def fwd_bwd() -> None:
        block.zero_grad(set_to_none=True)
        block(x).sum().backward()

    return _Layer(fwd_bwd=fwd_bwd, forward=lambda: block(x), tokens=tokens, scale=scale)


def _time_layers(
    torch: Any,
    device: str,
    sync: Any,
    shape: LayerShape,
    dtypes: list[str],
    mode: str,
    budget: _Budget,
) -> tuple[list[LayerTiming], list[str]]:
    """Forward+backward and forward of one block per dtype, timed interleaved.

    NOTE: the dtypes are compared with each other (fp32 against bf16-mixed decides the
    precision), so they run the same work (the first dtype's widths and token count, chosen
    for its time budget; a per-dtype choice made under load gave one dtype 64 tokens and
    another 1,024, and per-token overheads then decided the precision) and their rounds
    alternate: a burst of load from another process slows both, and their ratio survives it.
    """
    notes: list[str] = []
    ready: dict[str, _Layer] = {}
    for dtype in dtypes:
        if not budget.ok():
            break
        first = next(iter(ready.values()), None)
        layer, note = _prepare_layer(torch, device, sync, shape, dtype, mode, like=first)
        if layer is not None:
            ready[dtype] = layer
        if note:
            notes.append(note)
    while ready:
        try:
            both = measure_interleaved({d: lt.fwd_bwd for d, lt in ready.items()}, sync)
            forward = measure_interleaved({d: lt.forward for d, lt in ready.items()}, sync)
        except RuntimeError as exc:
            if not is_out_of_memory(exc) or len(ready) == 1:
                if is_out_of_memory(exc):
                    (dtype,) = ready
                    notes.append(f"layer in {dtype}: out of memory at {ready[dtype].tokens} tokens")
                    return [], notes
                raise
            # Out of memory with every dtype's block alive: drop the widest dtype's block.
            dtype = next(iter(ready))
            notes.append(f"layer in {dtype}: out of memory beside the other dtypes' blocks")
            del ready[dtype]
            continue
        return [
            LayerTiming(
                dtype=d,
                tokens=lt.tokens,
                timing=both[d],
                forward=forward[d],
                width_scale=lt.scale,
            )
            for d, lt in ready.items()
        ], notes
    return [], notes


def time_gemm_shapes(
    torch: Any,
    device: str,
    sync: Any,
    spec: ModelSpec,
    dtype_name: str,
    token_counts: list[int],
    budget: _Budget | None = None,
) -> tuple[list[GemmTiming], str]:
    """TFLOP/s of each distinct weight GEMM of one block at several token counts.

    The cost model then prices the block's GEMMs from these (label ``measured``) instead of
    the fitted saturation curve. Synchronises before every clock read (``measure``); an
    out-of-memory stops the sweep for that shape and is reported, not raised.
    """
    dtype = getattr(torch, _DTYPES[dtype_name])
    out: list[GemmTiming] = []
    notes: list[str] = []
    shapes = sorted({(g.n, g.k) for g in block_gemms(spec, 1)})
    for n, k in shapes:
        for m in token_counts:
            if budget is not None and not budget.ok():
                return out, "; ".join([*notes, "GEMM sweep stopped by the budget"])
            try:
                a = torch.randn(m, k, device=device).to(dtype)
                b = torch.randn(k, n, device=device).to(dtype)
                timing = measure(functools.partial(torch.mm, a, b), sync, repeats=_REPEATS)
            except RuntimeError as exc:
                if is_out_of_memory(exc):
                    notes.append(f"GEMM {m}x{k}x{n} {dtype_name}: out of memory")
                    break
                raise
            flops = 2.0 * m * n * k
            out.append(
                GemmTiming(m=m, n=n, k=k, dtype=dtype_name, tflops=flops / timing.median_s / 1e12)
            )
    return out, "; ".join(notes)


def _cuda_free(torch: Any, device: str) -> int:
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def _fit_quadratic(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares y = a x² + b x + c in relative error (each row weighted by 1/y), so the
    short sequences' small times count as much as the long ones'. Solves the 3x3 normal
    equations with partial pivoting (no numpy here)."""
    rows = [[x * x / y, x / y, 1.0 / y] for x, y in zip(xs, ys, strict=True)]
    target = [1.0] * len(xs)
    m = [[sum(r[i] * r[j] for r in rows) for j in range(3)] for i in range(3)]
    v = [sum(r[i] * t for r, t in zip(rows, target, strict=True)) for i in range(3)]
    for i in range(3):
        p = max(range(i, 3), key=lambda r: abs(m[r][i]))
        m[i], m[p], v[i], v[p] = m[p], m[i], v[p], v[i]
        if abs(m[i][i]) < 1e-300:
            return 0.0, 0.0, sum(ys) / len(ys)
        for r in range(i + 1, 3):
            f = m[r][i] / m[i][i]
            for c in range(i, 3):
                m[r][c] -= f * m[i][c]
            v[r] -= f * v[i]
    sol = [0.0, 0.0, 0.0]
    for i in (2, 1, 0):
        sol[i] = (v[i] - sum(m[i][c] * sol[c] for c in range(i + 1, 3))) / m[i][i]
    return sol[0], sol[1], sol[2]


def _time_attention(
    torch: Any,
    device: str,
    sync: Any,
    shape: LayerShape,
    dtypes: list[str],
    lens: list[int],
    budget: _Budget,
) -> list[AttentionFit]:
    """Causal SDPA forward+backward per backend, dtype and sequence length, fitted a·s² + b·s + c.

    NOTE: at each (backend, length) the dtypes are timed interleaved, so load from another
    process falls on all of them alike (they are compared when the precision is chosen).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {
        "math": "MATH",
        "flash": "FLASH_ATTENTION",
        "mem-efficient": "EFFICIENT_ATTENTION",
        "cudnn": "CUDNN_ATTENTION",
    }
    out: list[AttentionFit] = []
    for label, attr in backends.items():
        backend = getattr(SDPBackend, attr, None)
        if backend is None:
            continue
        xs: dict[str, list[float]] = {d: [] for d in dtypes}
        ys: dict[str, list[float]] = {d: [] for d in dtypes}
        failed: dict[str, str] = {}
        for s in lens:
            live = [d for d in dtypes if d not in failed]
            if not budget.ok() or not live:
                break
            runs = {}
            for d in live:
                q = torch.randn(
                    1,
                    shape.heads,
                    s,
                    shape.head_dim,
                    device=device,
                    dtype=getattr(torch, _DTYPES[d]),
                    requires_grad=True,
                )
                k = torch.randn_like(q, requires_grad=True)
                v = torch.randn_like(q, requires_grad=True)

                def run(q: Any = q, k: Any = k, v: Any = v, backend: Any = backend) -> None:
                    with sdpa_kernel([backend]):
                        out_ = torch.nn.functional.scaled_dot_product_attention(
                            q, k, v, is_causal=True
                        )
                    out_.sum().backward()

                try:
                    run()  # alone first: a backend or dtype that cannot run fails here
                except RuntimeError as exc:
                    failed[d] = _attention_failure(exc, s, device)
                    continue
                runs[d] = run
            if not runs:
                continue
            try:
                timings = measure_interleaved(
                    runs, sync, repeats=_REPEATS, warmup=0, max_seconds=3.0 * len(runs)
                )
            except RuntimeError as exc:
                for d in runs:
                    failed[d] = _attention_failure(exc, s, device)
                continue
            for d, timing in timings.items():
                xs[d].append(float(s))
                ys[d].append(timing.median_s)
        for d in dtypes:
            fit = _attention_fit(label, d, xs[d], ys[d], failed.get(d))
            if fit is not None:
                out.append(fit)
    return out


def _attention_failure(exc: RuntimeError, s: int, device: str) -> str:
    if is_out_of_memory(exc):
        return f"out of memory at s={s}"
    if "No viable backend" in str(exc):
        return f"not available on {device}"
    return str(exc).splitlines()[0][:120]


def _attention_fit(
    label: str, dtype_name: str, xs: list[float], ys: list[float], failed: str | None
) -> AttentionFit | None:
    if failed and not xs:
        return AttentionFit(
            backend=label,
            dtype=dtype_name,
            a=0,
            b=0,
            c=0,
            seq_lens=[],
            seconds=[],
            max_rel_residual=0,
            failed=failed,
        )
    if len(xs) < 3:
        return None
    a, b, c = _fit_quadratic(xs, ys)
    resid = max(abs(a * x * x + b * x + c - y) / y for x, y in zip(xs, ys, strict=True))
    return AttentionFit(
        backend=label,
        dtype=dtype_name,
        a=a,
        b=b,
        c=c,
        seq_lens=[int(x) for x in xs],
        seconds=ys,
        max_rel_residual=round(resid, 4),
        failed=failed,
    )


def _layer_tensors(torch: Any, spec: ModelSpec, device: str, scale: float) -> dict[str, Any]:
    params = {}
    for name, dims in spec.layer_matrix_shapes():
        shape = tuple(max(1, int(d * scale)) for d in dims)
        p = torch.nn.Parameter(torch.randn(*shape, device=device) * 0.02)
        p.grad = torch.randn_like(p) * 1e-3
        params[name.replace(".", "_")] = p
    return params


def _time_optimizer(
    torch: Any,
    device: str,
    sync: Any,
    spec: ModelSpec,
    shape: LayerShape,
    oid: str,
    budget: _Budget,
    mode: str = "full",
) -> list[OptimizerTiming]:
    entry = OPTIMIZERS.get(oid)
    if entry is None:
        return [
            OptimizerTiming(optimizer=oid, status="unsupported", detail="no entry in the table")
        ]
    kind = "cuda" if device.startswith("cuda") else device
    variants = [v for v in entry.variants if kind in v.devices]
    if not variants:
        return [OptimizerTiming(optimizer=oid, status="unsupported", detail=entry.unavailable)]
    layer_params = spec.layer_parameter_count()
    free = psutil.virtual_memory().available if device == "cpu" else _cuda_free(torch, device)
    # Parameters + gradients + up to 4 state/temporary copies, all fp32.
    scale, why = 1.0, ""
    if layer_params * 4 * 6 > 0.4 * free:
        scale, why = math.sqrt(0.4 * free / (layer_params * 4 * 6)), "memory"
    if mode == "quick" and layer_params * scale**2 > QUICK_MAX_LAYER_PARAMS:
        # NOTE: the quick set is elementwise optimizers, whose cost per parameter is flat
        # from 25M to 100M parameters (AdamW 1.22 ns/param fused, 5.50-5.58 foreach, at both:
        # benchmarks/results/cpu_efficiency.json); a 7B layer (202M)
        # would spend minutes on repeats without changing the per-parameter figure.
        scale, why = math.sqrt(QUICK_MAX_LAYER_PARAMS / layer_params), "quick-mode time"
    out = []
    for variant in variants:
        if not budget.ok():
            out.append(
                OptimizerTiming(
                    optimizer=oid, variant=variant.name, status="skipped", detail="budget spent"
                )
            )
            continue
        out.append(_time_variant(torch, device, sync, spec, oid, variant, scale, why))
    return out


def _time_variant(
    torch: Any,
    device: str,
    sync: Any,
    spec: ModelSpec,
    oid: str,
    variant: Variant,
    scale: float,
    why: str = "memory",
) -> OptimizerTiming:
    tensors = _layer_tensors(torch, spec, device, scale)
    module = torch.nn.Module()
    for name, p in tensors.items():
        module.register_parameter(name, p)
    module.optadvise_hidden = max(1, int((spec.hidden_size or 1) * scale))
    module.optadvise_heads = spec.num_attention_heads or 1
    params = list(tensors.values())
    n = sum(p.numel() for p in params)
    detail = f"widths scaled by {scale:.2f} ({why})" if scale < 1 else ""
    try:
        opt = variant.build(torch, params, module)
    except (ImportError, RuntimeError, TypeError, ValueError) as exc:
        return OptimizerTiming(
            optimizer=oid,
            variant=variant.name,
            status="unsupported",
            detail=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
        )

    def refill(create_graph: bool) -> None:
        if create_graph:
            opt.zero_grad(set_to_none=True)
            loss = sum((p * p).sum() for p in params)
            loss.backward(create_graph=True)

    def step() -> None:
        if variant.needs == "closure":
            opt.step(lambda: 0.0)  # the two forwards are costed separately
        elif variant.needs == "hessian":
            refill(True)
            opt.step()
        else:
            opt.step()

    try:
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        first = time.perf_counter() - t0
        steady = measure(step, sync, repeats=_REPEATS, warmup=1, max_seconds=10.0)
        if variant.needs == "hessian":
            # The create_graph backward is not the optimizer's cost: time it alone, subtract.
            back = measure(lambda: refill(True), sync, repeats=_REPEATS)
            steady = steady.model_copy(
                update={"median_s": max(0.0, steady.median_s - back.median_s)}
            )
    except (RuntimeError, MemoryError) as exc:
        status = "does-not-fit" if is_out_of_memory(exc) else "failed"
        return OptimizerTiming(
            optimizer=oid,
            variant=variant.name,
            status=status,
            detail=str(exc).splitlines()[0][:160],
            layer_parameters=n,
        )
    amortised = None
    if variant.interval:
        # The first step builds and refreshes the preconditioner / projection: spread that
        # extra over the refresh interval.
        amortised = steady.median_s + max(0.0, first - steady.median_s) / variant.interval
    return OptimizerTiming(
        optimizer=oid,
        variant=variant.name,
        steady=steady,
        first_step_s=first,
        interval=variant.interval,
        refresh_s=first if variant.interval else None,
        amortised_s=amortised,
        layer_parameters=n,
        detail=detail,
    )
