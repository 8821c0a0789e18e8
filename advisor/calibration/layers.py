"""Layer and attention timing: one transformer block (without its attention core) timed
forward and forward+backward per dtype, and causal SDPA per backend, dtype and sequence
length, fitted a·s² + b·s + c.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from advisor.calibration.device import DTYPES, REPEATS, Budget, cuda_free
from advisor.calibration.timing import is_out_of_memory, measure, measure_interleaved
from advisor.cost.data import AttentionFit, LayerShape, LayerTiming

# Seconds one timed call of a layer should take: long enough to time, short enough to repeat.
TARGET_CALL_S = {"quick": 0.25, "full": 1.0}


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
    dtype = getattr(torch, DTYPES[dtype_name])
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
    free = psutil.virtual_memory().available if device == "cpu" else cuda_free(torch, device)
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
    tokens = int(TARGET_CALL_S[mode] / max(per_token, 1e-9))
    tokens = max(64, min(2048, 2 ** int(math.log2(max(tokens, 64)))))
    if per_token * 64 > 4 * TARGET_CALL_S[mode] and scale == 1.0:
        scale = math.sqrt(4 * TARGET_CALL_S[mode] / (per_token * 64))
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


def time_layers(
    torch: Any,
    device: str,
    sync: Any,
    shape: LayerShape,
    dtypes: list[str],
    mode: str,
    budget: Budget,
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


def fit_quadratic(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
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


def time_attention(
    torch: Any,
    device: str,
    sync: Any,
    shape: LayerShape,
    dtypes: list[str],
    lens: list[int],
    budget: Budget,
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
                    dtype=getattr(torch, DTYPES[d]),
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
                    runs, sync, repeats=REPEATS, warmup=0, max_seconds=3.0 * len(runs)
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
    a, b, c = fit_quadratic(xs, ys)
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
