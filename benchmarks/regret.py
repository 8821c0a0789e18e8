"""Regret on this machine: how far the recommender's first pick is from the fastest measured option.

Calibrates this CPU (quick mode) for a small decoder into a temporary cache, runs
``optadvise recommend --objective speed`` through ``run_recommend`` (probe target, that
cache), takes its whole ranking, and times for real the first pick plus a sample of the
other feasible candidates (its top ones and the best-ranked representative of every
precision, attention, checkpointing, task and optimizer value further down). Regret is the
first pick's measured time to target over the fastest measured one's, minus one, with time
to target as the speed objective counts it: measured step time x max(1, steps to AdamW's
loss). A zeroth-order step can be quicker than AdamW's on this CPU, but it needs 30-100x
the steps (Malladi et al. 2023): it is not the fastest way to a trained model.

    python -m benchmarks.regret --out regret.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from advisor.config import Precision, TrainingConfig
from advisor.plan import Recommendation, describe_config
from benchmarks.realstep import (
    StepTiming,
    Unsupported,
    cache_dir,
    kendall_tau,
    other_cpu_share,
    small_llama,
    time_step,
    unsupported_reason,
    use_threads,
)

# fp16 compute has no fast path on this CPU kind (the probe's interleaved fp16/fp32 GEMM
# ratios, advisor/hardware/fast16.py: 0.84-0.93x fp32): measured only when picked.
_SLOW_ON_CPU = {Precision.FP16, Precision.FP16_MIXED, Precision.AMP_FP16}


class Setup(BaseModel):
    """The decoder and workload the regret is measured on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden: int
    heads: int
    intermediate: int
    vocab: int
    layers: int
    seq_len: int
    micro_batch: int
    task: str = "finetune"
    top: int = 12  # the tool's top picks, all measured
    extra: int = 16  # at most this many diverse picks from further down
    calib_optimizers: tuple[str, ...] | None = None  # None: the quick set
    calib_seq_lens: list[int] | None = None


FULL = Setup(
    hidden=256, heads=4, intermediate=688, vocab=8192, layers=4, seq_len=256, micro_batch=1
)


def sample(ranking: list[Recommendation], top: int, extra: int) -> list[Recommendation]:
    """The first pick, the next runnable candidates up to ``top``, then for every value of
    task, precision, attention, checkpointing and optimizer (in that order) not yet
    covered, its best-ranked runnable candidate, up to ``extra`` more."""
    chosen: list[Recommendation] = [ranking[0]]
    for r in ranking[1:]:
        if len(chosen) >= top:
            break
        if _runnable(r):
            chosen.append(r)
    covered = {(d, _value(r.config, d)) for r in chosen for d in _DIMENSIONS}
    added = 0
    for dim in _DIMENSIONS:
        for r in ranking:
            if added >= extra:
                return chosen
            key = (dim, _value(r.config, dim))
            if key in covered or r in chosen or not _runnable(r):
                continue
            chosen.append(r)
            covered |= {(d, _value(r.config, d)) for d in _DIMENSIONS}
            added += 1
    return chosen


_DIMENSIONS = ("task", "precision", "attention", "checkpointing", "optimizer")


def _value(config: TrainingConfig, dimension: str) -> object:
    """One of :data:`_DIMENSIONS` read off the nested configuration."""
    if dimension == "attention":
        return config.kernels.attention
    if dimension == "checkpointing":
        return config.savers.checkpointing
    return getattr(config, dimension)


def _runnable(r: Recommendation) -> bool:
    return r.config.precision not in _SLOW_ON_CPU and unsupported_reason(r.config) is None


def setup_spec(setup: Setup) -> Any:
    """The small decoder a regret run measures."""
    return small_llama(
        hidden=setup.hidden,
        layers=setup.layers,
        heads=setup.heads,
        intermediate=setup.intermediate,
        vocab=setup.vocab,
        name="regret",
    )


def run(
    setup: Setup,
    *,
    passes: int = 2,
    max_seconds: float = 20.0,
    cache_root: Path | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Calibrate, recommend, measure the sample; return the JSON-able result.

    Args:
        setup: the decoder and workload.
        passes: measure every candidate this many times, alternating the order, and keep
            the fastest median (a burst of other work only ever slows a run down).
        max_seconds: time cap per candidate and pass.
        cache_root: the calibration cache folder (default: a temporary one, removed after).
        log: where progress lines go.
    """
    from advisor.app.recommend import RecommendRequest, run_recommend
    from advisor.calibration.runner import run_calibration

    t_start = time.perf_counter()
    meter = other_cpu_share()
    spec = setup_spec(setup)
    with tempfile.TemporaryDirectory() as tmp, cache_dir(str(cache_root or tmp)):
        t0 = time.perf_counter()
        cache = run_calibration(
            spec,
            mode="quick",
            force=True,
            optimizers=setup.calib_optimizers,
            seq_lens=setup.calib_seq_lens,
        )
        calib_s = time.perf_counter() - t0
        request = RecommendRequest.from_flags(
            spec=spec,
            task=setup.task,
            seq_len=str(setup.seq_len),
            micro_batch=setup.micro_batch,
            # One micro-batch per step: the steps timed here have no accumulation.
            global_batch=setup.micro_batch,
            objective="speed",
            top=100_000,
            calibrate=None,  # use the cache just written
        )
        t0 = time.perf_counter()
        report = run_recommend(request)
        recommend_s = time.perf_counter() - t0
    ranking = report.recommendations
    if not ranking:
        raise RuntimeError("the recommender found no feasible configuration")
    picked = sample(ranking, setup.top, setup.extra)
    log(
        f"calibrated in {calib_s:.1f} s; recommender: {len(ranking)} feasible of "
        f"{report.candidates_considered} considered ({recommend_s:.1f} s); "
        f"measuring {len(picked)}; {report.cost_note}"
    )
    measured: dict[int, StepTiming] = {}
    skipped: dict[int, str] = {}
    passes_s: dict[int, list[float]] = {}
    # A throwaway step first: the first configuration timed in a process pays for allocator
    # growth and the first SDPA call.
    time_step(spec, picked[1].config, repeats=5, max_seconds=5)
    for p in range(passes):
        order = picked if p % 2 == 0 else list(reversed(picked))
        for r in order:
            if r.rank in skipped:
                continue
            try:
                st = time_step(spec, r.config, max_seconds=max_seconds)
            except Unsupported as exc:
                skipped[r.rank] = str(exc)
                continue
            except RuntimeError as exc:
                skipped[r.rank] = f"failed: {str(exc).splitlines()[0][:100]}"
                continue
            passes_s.setdefault(r.rank, []).append(st.median_s)
            prev = measured.get(r.rank)
            if prev is None or st.median_s < prev.median_s:
                measured[r.rank] = st
            log(f"  #{r.rank:<4d} {describe_config(r.config)}: {st.median_s * 1e3:.1f} ms")
    rows: list[dict[str, Any]] = []
    for r in picked:
        got = measured.get(r.rank)
        rows.append(
            {
                "rank": r.rank,
                "configuration": describe_config(r.config),
                "config": r.config.model_dump(mode="json"),
                "optimizer": r.optimizer,
                "task": r.task,
                "precision": r.precision,
                "attention": r.attention,
                "checkpointing": r.checkpointing,
                "predicted_s": r.step_time_s,
                "cost_source": r.cost_source,
                "components_s": r.cost_components,
                "measured_s": got.median_s if got else None,
                "steps_factor": _steps_factor(r),
                "measured_iqr_s": got.iqr_s if got else None,
                "capped": got.capped if got else None,
                "measured_pass_medians_s": passes_s.get(r.rank, []),
                "skipped": skipped.get(r.rank),
            }
        )
    timed = [x for x in rows if x["measured_s"] is not None]
    first = rows[0]
    fastest = min(timed, key=lambda x: x["measured_s"] * x["steps_factor"])
    regret = (
        100
        * (
            first["measured_s"]
            * first["steps_factor"]
            / (fastest["measured_s"] * fastest["steps_factor"])
            - 1
        )
        if first["measured_s"] is not None
        else None
    )
    tau = kendall_tau([x["predicted_s"] for x in timed], [x["measured_s"] for x in timed])
    return {
        "benchmark": "regret",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "setup": setup.model_dump(),
        "model": spec.id,
        "parameters": spec.parameter_count(),
        "calibration_s": round(calib_s, 1),
        "calibration_warnings": cache.warnings,
        "cost_note": report.cost_note,
        "feasible": len(ranking),
        "considered": report.candidates_considered,
        "measured": len(timed),
        "first_pick": first["configuration"],
        "fastest_measured": fastest["configuration"],
        "fastest_rank": fastest["rank"],
        "regret_pct": regret,
        "kendall_tau_sample": tau,
        "rows": rows,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "threads": _threads(),
        "other_cpu_share": meter.other_share(),
    }


def _steps_factor(r: Recommendation) -> float:
    """Steps to AdamW's loss as the speed objective counts them: extra steps cost, published
    speed-ups are not credited (advisor.cost.convergence.objective_steps)."""
    band = r.steps_vs_adamw
    return max(1.0, band.central) if band is not None else 1.0


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def format_table(result: dict[str, Any]) -> str:
    """The result as a Markdown table plus the regret line."""
    lines = [
        "| rank | configuration | predicted ms | measured ms (IQR) | error % |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if r["measured_s"] is None:
            meas, err = f"not run: {r['skipped']}", ""
        else:
            meas = f"{r['measured_s'] * 1e3:.1f} ({r['measured_iqr_s'] * 1e3:.1f})"
            meas += " capped" if r["capped"] else ""
            err = f"{100 * (r['predicted_s'] / r['measured_s'] - 1):+.0f}"
        lines.append(
            f"| {r['rank']} | {r['configuration']} | {r['predicted_s'] * 1e3:.1f} | {meas} "
            f"| {err} |"
        )
    lines.append("")
    lines.append(
        f"first pick: {result['first_pick']}; fastest to target measured: "
        f"{result['fastest_measured']} "
        f"(rank {result['fastest_rank']})"
    )
    regret = result["regret_pct"]
    lines.append(
        f"regret = {regret:.1f}% over {result['measured']} measured of {result['feasible']} "
        f"feasible ({result['considered']} considered); Kendall tau (predicted vs measured, "
        f"sample) = {result['kendall_tau_sample']:.2f}"
        if regret is not None
        else "regret: the first pick could not be run here"
    )
    return "\n".join(lines)


def main() -> None:
    """Command line: run at the full size and write JSON to --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON result path")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    use_threads(args.threads)
    result = run(FULL, passes=args.passes)
    print(format_table(result))
    share = result["other_cpu_share"]
    print(
        f"wall time {result['wall_s']} s, {result['threads']} thread(s), other processes used "
        f"{share if share is None else f'{share:.0%}'} of the CPU"
    )
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
