"""`optadvise calibrate --convergence`: a measured proxy of steps to AdamW's loss.

Trains a small proxy of the user's architecture family — the same block (norm, MLP kind,
attention with rotary positions, causal language modelling) scaled down so that each run
takes a few seconds on a CPU — on a synthetic corpus with real structure, with every
candidate optimizer at a short learning-rate sweep and a fixed step budget. AdamW's best
final held-out loss is the target; each optimizer's best run reports the steps it took to
reach it (interpolated between evaluations), or "not reached" (its ratio is then a lower
bound). Results are cached per device fingerprint and family, atomically, and
``advisor.cost.convergence`` shows them beside the published ranges as ``measured-proxy``.

The corpus (:func:`synthetic_corpus`) is not uniform noise: tokens follow a sparse
first-order Markov chain whose successor choices and unigram frequencies are Zipfian, and
one sequence in two copies an earlier span (an induction pattern attention must learn), so
the loss has a floor well below log(vocab) and both the MLP and attention matter.

NOTE: a proxy at ~0.2M parameters, trained for a few hundred steps, measures the direction
and rough size of an optimizer's step advantage at small scale, not its value at 7B: Wen
et al. 2025 show gains shrinking with size. It is evidence beside the published range, and
is used as the central value only where nothing is published. Steps are read from
intermediate evaluations of a run whose learning rate decays to the end; Wen et al. warn
that intermediate checkpoints understate a fast optimizer's lead, so the ratios are
conservative.

torch is imported lazily: loading the cache (:func:`load_convergence`) never imports it.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from advisor.calibration import cache as cal_cache
from advisor.cost.convergence import (
    CONVERGENCE_SCHEMA_VERSION,
    ConvergenceCache,
    ProxyCurvePoint,
    ProxyResult,
    ProxyRun,
)
from advisor.errors import UserError
from advisor.model.spec import Arch, Mlp, ModelSpec, Norm

Progress = Callable[[str, float], None]

# The default wall-clock budget. The default set (8 optimizers x 3 rates = 24 runs) took
# 113 s on one quiet EPYC core (about 4.5 s per run at 200 steps); on a busy machine the
# budget stops it after pass 1 (one rate per optimizer) and marks the cache partial.
DEFAULT_BUDGET_S = 180.0
STEPS = 200
EVAL_EVERY = 20
BATCH = 12
SEQ = 64
VOCAB = 512
# The learning-rate sweeps: three points around each optimizer's usual small-model rate
# (Lion 3-10x below AdamW, Chen et al. 2023; Muon 0.02-0.05, Jordan 2024; SGD needs far
# larger rates on transformers), centred where full sweeps on this proxy found the best
# rates: 200 steps at 0.16M parameters favour rates ~10x above the usual small-model ones
# (two earlier grids, each one step lower, were won by their top points).
LR_GRID: dict[str, tuple[float, ...]] = {
    "adamw": (1e-2, 3e-2, 1e-1),
    "adam": (1e-2, 3e-2, 1e-1),
    "sgd": (0.3, 1.0, 3.0),
    "sgd-momentum": (0.1, 0.3, 1.0),
    "nesterov": (0.1, 0.3, 1.0),
    "adagrad": (3e-2, 1e-1, 3e-1),
    "rmsprop": (3e-3, 1e-2, 3e-2),
    "adafactor": (3e-2, 1e-1, 3e-1),
    "lion": (3e-3, 1e-2, 3e-2),
    "muon": (0.02, 0.05, 0.1),
    "soap": (1e-2, 3e-2, 1e-1),
    "mezo": (1e-3, 1e-2, 3e-2),
}
# The default set: AdamW, the classic first-order baselines, the sign, factored and
# matrix-preconditioned alternatives, and zeroth order; the rest run with --optimizers.
# Pass 1 runs them in this order, so a short budget keeps the most telling comparisons.
DEFAULT_OPTIMIZERS = ("adamw", "sgd", "muon", "mezo", "lion", "adafactor", "soap", "sgd-momentum")
# The proxies built from the optional pytorch-optimizer package (pip install
# 'optadvise[optimizers]'); without it they are skipped with a note, never a crash mid-run.
NEEDS_PYTORCH_OPTIMIZER = frozenset({"lion", "soap"})
# Muon: the quintic Newton-Schulz coefficients of Jordan 2024 (modded-nanogpt), 5 steps.
_NS_COEFFS = (3.4445, -4.7750, 2.0315)


class _Interrupted(Exception):
    pass


def missing_packages(ids: tuple[str, ...] | None = None) -> list[str]:
    """The optimizer ids (default: the default set) whose optional package is missing."""
    import importlib.util

    if importlib.util.find_spec("pytorch_optimizer") is not None:
        return []
    return [o for o in (ids or DEFAULT_OPTIMIZERS) if o in NEEDS_PYTORCH_OPTIMIZER]


def convergence_dir() -> Path:
    """Where proxy results live: beside the calibration caches, in their own folder."""
    return cal_cache.cache_dir() / "convergence"


def family_key(spec: ModelSpec) -> str:
    """The architecture family the proxy copies: block norm and MLP kind."""
    mlp = spec.mlp.value if spec.mlp is not None else "gelu"
    norm = spec.norm.value if spec.norm is not None else "layernorm"
    return f"{spec.arch.value}-{norm}-{mlp}"


def cache_file(device: str, family: str) -> Path:
    """The cache file of one device fingerprint and family."""
    fp = cal_cache.device_fingerprint(device)
    return convergence_dir() / f"{fp.device.replace(':', '')}-{fp.key()}-{family}.json"


def load_convergence(device: str, spec: ModelSpec) -> tuple[ConvergenceCache | None, str | None]:
    """This device's proxy results for the model's family, or None with why (never raises)."""
    path = cache_file(device, family_key(spec))
    try:
        raw = cal_cache.read_cache_json(path)
        if not isinstance(raw, dict) or raw.get("schema_version") != CONVERGENCE_SCHEMA_VERSION:
            return None, f"convergence cache {path} has another schema version; rebuild it"
        return ConvergenceCache.model_validate(raw), None
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, RecursionError, ValidationError) as exc:
        return None, f"convergence cache {path} is unreadable ({type(exc).__name__}); rebuild it"


def save_convergence(cache: ConvergenceCache, path: Path) -> Path | None:
    """Write atomically (temp file + rename): an interrupt never leaves half a file.

    Returns:
        The file, or None when it could not be written (a note then names the folder; the
        results still serve this run).
    """
    from advisor import notes
    from advisor.calibration.cache import write_json_atomic
    from advisor.data.safeio import describe

    try:
        return write_json_atomic(cache.model_dump_json(indent=1), path)
    except OSError as exc:
        notes.post(
            f"could not write the convergence results to {path.parent} ({describe(exc)}): "
            "they serve this run only"
        )
        return None


def run_convergence(
    spec: ModelSpec,
    *,
    device: str = "cpu",
    budget_s: float | None = None,
    force: bool = False,
    progress: Progress | None = None,
    optimizers: tuple[str, ...] | None = None,
    steps: int = STEPS,
    lrs: int = 3,
    seed: int = 0,
) -> ConvergenceCache:
    """Train the proxy with every optimizer and cache steps to AdamW's loss.

    Args:
        spec: the user's model (its family sets the proxy's block).
        device: cpu, cuda:N or mps.
        budget_s: stop after this many seconds (default :data:`DEFAULT_BUDGET_S`) and keep
            what was measured (``partial``).
        force: measure again even when a complete cache exists.
        progress: called with (what is running, fraction done).
        optimizers: the optimizer ids (default: every one with a sweep; AdamW always first).
        steps: the step budget of every run.
        lrs: how many learning rates of each sweep to run (1-3; tests use fewer).
        seed: the corpus, initialisation and data-order seed.

    Returns:
        The cache (also written to disk).

    Raises:
        UserError: for a family the proxy cannot copy (CNNs) or an unknown optimizer.
        KeyboardInterrupt: after saving the partial results.
    """
    ids, skipped = _optimizer_ids(spec, optimizers)
    started = time.perf_counter()  # the budget covers torch's import and the corpus too
    family = family_key(spec)
    path = cache_file(device, family)
    old, _ = load_convergence(device, spec)
    if old is not None and not force and _covers(old, ids, steps):
        return old
    report: Progress = progress or (lambda label, fraction: None)
    budget = DEFAULT_BUDGET_S if budget_s is None else budget_s
    shape, runs, per_step, partial, interrupted = _measure(
        spec,
        device,
        ids,
        steps=steps,
        lrs=lrs,
        seed=seed,
        started=started,
        budget=budget,
        report=report,
    )
    results, target = _results(ids, runs, per_step, steps)
    report("done", 1.0)
    cache = _make_cache(
        device,
        family,
        shape,
        seed=seed,
        steps=steps,
        results=results,
        target=target,
        partial=partial,
        started=started,
        budget=budget,
        warnings=_warnings(interrupted, skipped),
    )
    if any(r.runs for r in results):
        save_convergence(cache, path)
    if interrupted is not None:
        raise interrupted
    return cache


def _covers(old: ConvergenceCache, ids: tuple[str, ...], steps: int) -> bool:
    """Whether a cached measurement is complete, of the same step budget and every optimizer."""
    return not old.partial and old.steps == steps and {r.optimizer for r in old.results} >= set(ids)


def _optimizer_ids(
    spec: ModelSpec, optimizers: tuple[str, ...] | None
) -> tuple[tuple[str, ...], list[str]]:
    """The optimizers to run (AdamW first, those missing their package left out) and the
    ones left out.

    Raises:
        UserError: for a family the proxy cannot copy (CNNs) or an unknown optimizer.
    """
    if spec.arch is Arch.CNN:
        raise UserError(
            "the convergence proxy copies transformer blocks; a CNN family has none",
            "calibrate --convergence with a decoder or encoder model",
        )
    ids = tuple(optimizers or DEFAULT_OPTIMIZERS)
    unknown = [o for o in ids if o not in LR_GRID]
    if unknown:
        raise UserError(
            f"no convergence proxy for {', '.join(unknown)}", "use: " + ", ".join(LR_GRID)
        )
    skipped = missing_packages(ids)
    ids = ("adamw", *[o for o in ids if o != "adamw" and o not in skipped])
    return ids, skipped


def _measure(
    spec: ModelSpec,
    device: str,
    ids: tuple[str, ...],
    *,
    steps: int,
    lrs: int,
    seed: int,
    started: float,
    budget: float,
    report: Progress,
) -> tuple[
    dict[str, int],
    dict[str, list[ProxyRun]],
    dict[str, list[float]],
    bool,
    KeyboardInterrupt | None,
]:
    """Import torch, build the corpus and run the sweeps within the budget, on one thread.

    Returns:
        The proxy's shape, each optimizer's runs and seconds per step, whether the results
        are partial, and the interrupt that cut the sweeps short (None if none did).
    """
    from advisor.torchload import import_torch

    torch = import_torch()
    from advisor.calibration.device import check_device

    check_device(torch, device)
    # NOTE: the proxy's matrices are tiny, so one thread is as fast as two on a quiet machine
    # and far faster on a busy one (two threads spin against other processes: 55 ms vs 2-4 s
    # per step measured at load 9 on a 2-core EPYC).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    corpus = synthetic_corpus(torch, seed=seed)
    shape = _proxy_shape(spec)
    runs: dict[str, list[ProxyRun]] = {oid: [] for oid in ids}
    per_step: dict[str, list[float]] = {oid: [] for oid in ids}
    partial = False
    # Pass 1 runs every optimizer's middle rate (AdamW first: it sets the target), pass 2
    # the rest of each sweep, so a spent budget still leaves one run per optimizer.
    plan = [(oid, lr) for oid in ids for lr in _sweep(LR_GRID[oid], lrs)[:1]]
    plan += [(oid, lr) for oid in ids for lr in _sweep(LR_GRID[oid], lrs)[1:]]
    interrupted: KeyboardInterrupt | None = None
    try:
        for i, (oid, lr) in enumerate(plan):
            elapsed = time.perf_counter() - started
            # A run is started only if one more of the longest so far (evaluations included),
            # plus a 10% margin, still fits the budget.
            longest = max((sps * steps for v in per_step.values() for sps in v), default=0.0)
            if elapsed + 1.1 * longest > budget:
                partial = True
                break
            report(f"{oid} lr={lr:g}", i / len(plan))
            run, sps = train_proxy(torch, device, shape, corpus, oid, lr, steps, seed)
            runs[oid].append(run)
            per_step[oid].append(sps)
    except KeyboardInterrupt as exc:  # keep what was measured, then stop
        interrupted = exc
        partial = True
    finally:
        torch.set_num_threads(threads)
    return shape, runs, per_step, partial, interrupted


def _make_cache(
    device: str,
    family: str,
    shape: dict[str, int],
    *,
    seed: int,
    steps: int,
    results: list[ProxyResult],
    target: float | None,
    partial: bool,
    started: float,
    budget: float,
    warnings: list[str],
) -> ConvergenceCache:
    """The cache record of a measurement: the proxy, its corpus, the results and the time."""
    return ConvergenceCache(
        fingerprint_key=cal_cache.device_fingerprint(device).key(),
        device=device,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        family=family,
        proxy={**shape, "seq_len": SEQ, "batch": BATCH, "vocab": VOCAB},
        proxy_params=_param_count(shape),
        corpus=(
            f"synthetic: {VOCAB}-token Zipfian Markov chain (8 successors per token) with "
            f"copied spans, seed {seed}"
        ),
        steps=steps,
        batch_tokens=BATCH * SEQ,
        target_loss=target,
        results=results,
        partial=partial,
        seconds=round(time.perf_counter() - started, 2),
        budget_s=budget,
        warnings=warnings,
    )


def _warnings(interrupted: KeyboardInterrupt | None, skipped: list[str]) -> list[str]:
    """An interrupt, and the optimizers whose optional package is missing."""
    return (["interrupted: partial results kept"] if interrupted else []) + (
        [f"not measured ({', '.join(skipped)}): pytorch-optimizer is not installed"]
        if skipped
        else []
    )


# --- corpus ---------------------------------------------------------------------------


def synthetic_corpus(torch: Any, *, seed: int = 0, sequences: int = 4096) -> Any:
    """A token corpus with structure: a sparse Zipfian Markov chain plus copied spans.

    Each token has 8 possible successors drawn once (Zipfian over the vocabulary), chosen
    with Zipfian probabilities; 10% of steps jump to a Zipfian-random token. Every second
    sequence repeats a 12-token span from its first half in its second half.

    Returns:
        A ``(sequences, SEQ + 1)`` int64 tensor.
    """
    gen = torch.Generator().manual_seed(seed)
    ranks = torch.arange(1, VOCAB + 1, dtype=torch.float64)
    unigram = 1.0 / ranks**1.1
    successors = torch.multinomial(unigram.expand(VOCAB, -1), 8, generator=gen)
    choice = 1.0 / torch.arange(1, 9, dtype=torch.float64) ** 1.5
    n = sequences
    out = torch.empty(n, SEQ + 1, dtype=torch.long)
    out[:, 0] = torch.multinomial(unigram, n, replacement=True, generator=gen)
    for t in range(1, SEQ + 1):
        pick = torch.multinomial(choice, n, replacement=True, generator=gen)
        nxt = successors[out[:, t - 1], pick]
        jump = torch.rand(n, generator=gen) < 0.1
        rnd = torch.multinomial(unigram, n, replacement=True, generator=gen)
        out[:, t] = torch.where(jump, rnd, nxt)
    span = 12
    copy = torch.arange(n) % 2 == 0
    src = torch.randint(0, SEQ // 2 - span, (n,), generator=gen)
    dst = torch.randint(SEQ // 2, SEQ + 1 - span, (n,), generator=gen)
    for i in torch.nonzero(copy).flatten().tolist():
        s, d = int(src[i]), int(dst[i])
        out[i, d : d + span] = out[i, s : s + span]
    return out


# --- the proxy model ---------------------------------------------------------------------


def _proxy_shape(spec: ModelSpec) -> dict[str, int]:
    # NOTE: encoders are proxied with the same blocks under a causal language-modelling loss
    # (a masked-LM objective would be closer to their training; left out to keep one loss).
    gated = spec.mlp is Mlp.GATED_SILU
    hidden, heads = 64, 4
    # Gated MLPs use 8/3 of the width (Llama's ratio) so both kinds cost about the same.
    return {
        "hidden": hidden,
        "layers": 2,
        "heads": heads,
        "intermediate": 176 if gated else 256,
        "gated": int(gated),
        "rmsnorm": int(spec.norm is Norm.RMSNORM),
    }


def _param_count(shape: dict[str, int]) -> int:
    h, f = shape["hidden"], shape["intermediate"]
    per_layer = 4 * h * h + (3 if shape["gated"] else 2) * h * f + 2 * h
    return 2 * VOCAB * h + shape["layers"] * per_layer + h


def _build(torch: Any, shape: dict[str, int]) -> Any:
    nn, f = torch.nn, torch.nn.functional
    h, heads, inter = shape["hidden"], shape["heads"], shape["intermediate"]
    hd = h // heads

    def norm() -> Any:
        return nn.RMSNorm(h, eps=1e-6) if shape["rmsnorm"] else nn.LayerNorm(h)

    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    angles = torch.outer(torch.arange(SEQ, dtype=torch.float32), inv)
    cos, sin = angles.cos(), angles.sin()

    def rope(x: Any) -> Any:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        c, s = cos[: x.shape[-2]], sin[: x.shape[-2]]
        return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)

    class Block(nn.Module):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.n1, self.n2 = norm(), norm()
            self.qkv = nn.Linear(h, 3 * h, bias=False)
            self.o = nn.Linear(h, h, bias=False)
            self.up = nn.Linear(h, inter, bias=False)
            self.gate = nn.Linear(h, inter, bias=False) if shape["gated"] else None
            self.down = nn.Linear(inter, h, bias=False)

        def forward(self, x: Any) -> Any:
            b, s, _ = x.shape
            q, k, v = self.qkv(self.n1(x)).view(b, s, 3, heads, hd).permute(2, 0, 3, 1, 4)
            a = f.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True)
            x = x + self.o(a.transpose(1, 2).reshape(b, s, h))
            y = self.n2(x)
            m = f.silu(self.gate(y)) * self.up(y) if self.gate is not None else f.gelu(self.up(y))
            return x + self.down(m)

    class Proxy(nn.Module):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(VOCAB, h)
            self.blocks = nn.ModuleList(Block() for _ in range(shape["layers"]))
            self.norm = norm()
            self.head = nn.Linear(h, VOCAB, bias=False)

        def forward(self, tokens: Any) -> Any:
            x = self.embed(tokens[:, :-1])
            for block in self.blocks:
                x = block(x)
            logits = self.head(self.norm(x))
            return f.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())

    return Proxy()


# --- optimizers --------------------------------------------------------------------------


def _muon(torch: Any, model: Any, lr: float) -> list[Any]:
    """Muon on hidden matrices (Jordan 2024), AdamW on embeddings, head and 1-D tensors."""
    hidden = [p for n, p in model.named_parameters() if p.dim() == 2 and n.startswith("blocks")]
    rest = [p for n, p in model.named_parameters() if not (p.dim() == 2 and n.startswith("blocks"))]

    class Muon(torch.optim.Optimizer):  # type: ignore[name-defined,misc]
        def __init__(self, params: list[Any]) -> None:
            super().__init__(params, {"lr": lr, "momentum": 0.95})

        @torch.no_grad()  # type: ignore[untyped-decorator,misc]
        def step(self, closure: Any = None) -> None:
            a, b, c = _NS_COEFFS
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    buf = self.state[p].setdefault("m", torch.zeros_like(p))
                    buf.mul_(group["momentum"]).add_(p.grad)
                    g = p.grad.add(buf, alpha=group["momentum"])  # Nesterov
                    x = g / (g.norm() + 1e-7)
                    tall = x.shape[0] > x.shape[1]
                    if tall:
                        x = x.T
                    for _ in range(5):
                        xx = x @ x.T
                        x = a * x + (b * xx + c * xx @ xx) @ x
                    if tall:
                        x = x.T
                    scale = max(1.0, p.shape[0] / p.shape[1]) ** 0.5
                    p.add_(x, alpha=-group["lr"] * scale)

    # AdamW for the rest at a fixed rate (the modded-nanogpt recipe keeps them on Adam).
    return [Muon(hidden), torch.optim.AdamW(rest, lr=3e-3, betas=(0.9, 0.95))]


def _optimizers(torch: Any, oid: str, model: Any, lr: float) -> list[Any]:
    params = list(model.parameters())
    o = torch.optim
    if oid == "adamw":
        return [o.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.1)]
    if oid == "adam":
        return [o.Adam(params, lr=lr, betas=(0.9, 0.95))]
    if oid == "sgd":
        return [o.SGD(params, lr=lr)]
    if oid in ("sgd-momentum", "nesterov"):
        return [o.SGD(params, lr=lr, momentum=0.9, nesterov=oid == "nesterov")]
    if oid == "adagrad":
        return [o.Adagrad(params, lr=lr)]
    if oid == "rmsprop":
        return [o.RMSprop(params, lr=lr)]
    if oid == "adafactor":
        return [o.Adafactor(params, lr=lr)]
    if oid == "muon":
        return _muon(torch, model, lr)
    if oid == "lion":
        import pytorch_optimizer

        return [pytorch_optimizer.Lion(params, lr=lr, weight_decay=1.0, weight_decouple=True)]
    if oid == "soap":
        import pytorch_optimizer

        return [pytorch_optimizer.SOAP(params, lr=lr, precondition_frequency=10)]
    if oid == "mezo":
        from advisor.calibration.zeroth_order import MeZO

        return [MeZO(params, lr=lr, eps=1e-3, seed=0)]
    raise UserError(f"no convergence proxy for {oid}", "use: " + ", ".join(LR_GRID))


def _set_lr(opts: list[Any], factor: float, base: list[list[float]]) -> None:
    for opt, lrs in zip(opts, base, strict=True):
        if hasattr(opt, "param_groups"):
            for group, lr in zip(opt.param_groups, lrs, strict=True):
                group["lr"] = lr * factor
        else:  # MeZO keeps a single rate
            opt.lr = lrs[0] * factor


def _base_lrs(opts: list[Any]) -> list[list[float]]:
    return [
        [g["lr"] for g in o.param_groups] if hasattr(o, "param_groups") else [o.lr] for o in opts
    ]


def _schedule(step: int, steps: int) -> float:
    """Linear warm-up over 5% of the steps, then linear decay to 10% (the same for all)."""
    warm = max(1, steps // 20)
    if step < warm:
        return (step + 1) / warm
    return 1.0 - 0.9 * (step - warm) / max(1, steps - warm)


def train_proxy(
    torch: Any,
    device: str,
    shape: dict[str, int],
    corpus: Any,
    oid: str,
    lr: float,
    steps: int,
    seed: int,
) -> tuple[ProxyRun, float]:
    torch.manual_seed(seed)
    model = _build(torch, shape).to(device)
    opts = _optimizers(torch, oid, model, lr)
    base = _base_lrs(opts)
    held_out = corpus[-64:].to(device)
    train = corpus[:-64]
    order = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(seed + 1))
    curve: list[ProxyCurvePoint] = []
    started = time.perf_counter()
    zeroth = oid == "mezo"
    diverged = False
    for step in range(steps + 1):
        if step % EVAL_EVERY == 0 or step == steps:
            with torch.no_grad():
                loss = float(model(held_out))
            curve.append(
                ProxyCurvePoint(
                    step=step, loss=round(loss, 5), seconds=round(time.perf_counter() - started, 4)
                )
            )
            if not math.isfinite(loss) or loss > 2 * math.log(VOCAB):
                diverged = True
                break
        if step == steps:
            break
        idx = order[(step * BATCH) % (train.shape[0] - BATCH) :][:BATCH]
        batch = train[idx].to(device)
        _set_lr(opts, _schedule(step, steps), base)
        if zeroth:
            opts[0].step(lambda b=batch: model(b))
        else:
            loss_t = model(batch)
            loss_t.backward()
            for opt in opts:
                opt.step()
            model.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    final = None if diverged else curve[-1].loss
    # Per step over the steps actually run (a diverged run stops at its first bad evaluation).
    return ProxyRun(lr=lr, final_loss=final, curve=curve), seconds / max(1, curve[-1].step)


def _results(
    ids: tuple[str, ...],
    runs: dict[str, list[ProxyRun]],
    per_step: dict[str, list[float]],
    steps: int,
) -> tuple[list[ProxyResult], float | None]:
    """Each optimizer's best run and its steps to AdamW's best final loss."""
    adamw = _best(runs.get("adamw", []))
    target = adamw.final_loss if adamw is not None else None
    adamw_steps = (_steps_to(adamw.curve, target) or float(steps)) if adamw and target else None
    out = []
    for oid in ids:
        best = _best(runs[oid])
        if not runs[oid]:
            status, detail = "skipped", "budget spent or interrupted before it ran"
        elif best is None:
            status, detail = "diverged", "every learning rate tried diverged"
        else:
            status, detail = "ok", ""
        reached_at = _steps_to(best.curve, target) if best and target is not None else None
        ratio = None
        if best is not None and adamw_steps:
            ratio = round((reached_at or float(steps)) / adamw_steps, 4)
        out.append(
            ProxyResult(
                optimizer=oid,
                status=status,
                detail=detail,
                best_lr=best.lr if best else None,
                runs=runs[oid],
                steps_to_target=round(reached_at, 2) if reached_at is not None else None,
                reached=reached_at is not None,
                ratio=ratio,
                seconds_per_step=round(min(per_step[oid]), 6) if per_step[oid] else None,
            )
        )
    return out, target


def _sweep(grid: tuple[float, ...], n: int) -> tuple[float, ...]:
    """``n`` rates of the grid, the middle one first (it is usually the best)."""
    order = [grid[len(grid) // 2], *[g for i, g in enumerate(grid) if i != len(grid) // 2]]
    return tuple(order[: max(1, min(n, len(grid)))])


def _best(runs: list[ProxyRun]) -> ProxyRun | None:
    finished = [r for r in runs if r.final_loss is not None]
    return min(finished, key=lambda r: r.final_loss or math.inf) if finished else None


def _steps_to(curve: list[ProxyCurvePoint], target: float) -> float | None:
    """The first step at which the held-out loss reaches ``target`` (linear interpolation)."""
    prev: ProxyCurvePoint | None = None
    for pt in curve:
        if pt.loss <= target:
            if prev is None or prev.loss == pt.loss:
                return float(pt.step)
            frac = (prev.loss - target) / (prev.loss - pt.loss)
            return prev.step + frac * (pt.step - prev.step)
        prev = pt
    return None


__all__ = [
    "DEFAULT_BUDGET_S",
    "LR_GRID",
    "cache_file",
    "convergence_dir",
    "family_key",
    "load_convergence",
    "run_convergence",
    "synthetic_corpus",
]
