"""Prediction against measurement: the cost model's step time vs a real training step on this CPU.

Calibrates (quick mode) on a decoder with the same widths as the evaluated ones but a
different depth, then, for each evaluated configuration (its own depth, sequence length
and micro-batch: never the calibrated ones) and each optimizer, times a real full step
(forward, backward, optimizer step) and compares it with ``predict_step_time`` from that
cache. Reports the table, Kendall's tau of the optimizer ranking per configuration and the
median absolute percentage error.

    python -m benchmarks.predict_vs_measure --out predict.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from advisor.config import TrainingConfig
from advisor.cost import predict_for_optimizer
from advisor.cost.data import CalibrationCache
from advisor.hardware.profiles import HardwareProfile
from advisor.model.spec import ModelSpec
from advisor.rules.taxonomy import load_taxonomy
from benchmarks.realstep import (
    cache_dir,
    kendall_tau,
    other_cpu_share,
    small_llama,
    time_step,
    use_threads,
)

CALIBRATED_OPTIMIZERS = ("sgd", "sgd-momentum", "adamw", "adafactor", "lion", "mezo")


class Case(BaseModel):
    """One evaluated decoder configuration (all fp32, flash attention, no checkpointing)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    layers: int
    micro_batch: int
    seq_len: int


class Sizes(BaseModel):
    """Widths shared by the calibration and the evaluated configurations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden: int
    heads: int
    intermediate: int
    vocab: int
    calib_layers: int
    calib_seq_lens: list[int] | None  # None: the quick mode's own lengths


FULL = Sizes(
    hidden=384, heads=6, intermediate=1024, vocab=16384, calib_layers=2, calib_seq_lens=None
)
FULL_CASES = [
    Case(name="A", layers=4, micro_batch=1, seq_len=64),
    Case(name="B", layers=8, micro_batch=2, seq_len=48),
]


def local_cpu_profile() -> HardwareProfile:
    """The synthetic datasheet of this CPU the recommender would use (analytic fallback)."""
    from advisor.hardware.probe import probe_hardware
    from advisor.plan import cpu_profile_from_probe

    return cpu_profile_from_probe(probe_hardware(with_torch=False), None)


def predict(
    spec: ModelSpec, config: TrainingConfig, cache: CalibrationCache, hw: HardwareProfile
) -> Any:
    """The cost model's prediction, called the way the recommender calls it."""
    return predict_for_optimizer(
        spec, config, load_taxonomy().get(config.optimizer), calibration=cache, hardware=hw
    )


def run(
    sizes: Sizes,
    cases: list[Case],
    optimizers: tuple[str, ...],
    *,
    passes: int = 2,
    max_seconds: float = 30.0,
    calib_budget_s: float | None = None,
    calib_optimizers: tuple[str, ...] | None = None,
    cache_root: Path | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Calibrate, measure every case x optimizer, compare; return the JSON-able result.

    Args:
        sizes: the shared widths and the calibration's depth.
        cases: the evaluated configurations (their depth / sequence / batch differ from
            the calibration's).
        optimizers: the optimizers to compare (each must be calibrated).
        passes: measure every cell this many times, alternating the order, and keep the
            fastest median (a burst of other work only ever slows a run down).
        max_seconds: time cap per measured cell.
        calib_budget_s: the calibration's budget.
        calib_optimizers: the optimizers to calibrate (default: the six of the benchmark
            plus ``optimizers``).
        cache_root: the calibration cache folder (default: a temporary one, removed after).
        log: where progress lines go.
    """
    from advisor.calibration.runner import run_calibration

    t_start = time.perf_counter()
    meter = other_cpu_share()
    calib_spec = small_llama(
        hidden=sizes.hidden,
        layers=sizes.calib_layers,
        heads=sizes.heads,
        intermediate=sizes.intermediate,
        vocab=sizes.vocab,
        name="calib",
    )
    calibrated = calib_optimizers or tuple(dict.fromkeys((*CALIBRATED_OPTIMIZERS, *optimizers)))
    with tempfile.TemporaryDirectory() as tmp, cache_dir(str(cache_root or tmp)):
        t0 = time.perf_counter()
        cache = run_calibration(
            calib_spec,
            mode="quick",
            force=True,
            optimizers=calibrated,
            seq_lens=sizes.calib_seq_lens,
            budget_s=calib_budget_s,
        )
        calib_s = time.perf_counter() - t0
    shape_results = cache.shapes[0]
    log(
        f"calibrated in {calib_s:.1f} s on {calib_spec.name} (layers={sizes.calib_layers}); "
        f"attention seq_lens {[f.seq_lens for f in shape_results.attention if not f.failed][:1]}"
    )
    hw = local_cpu_profile()
    cells: dict[tuple[str, str], list[float]] = {}
    specs = {
        c.name: small_llama(
            hidden=sizes.hidden,
            layers=c.layers,
            heads=sizes.heads,
            intermediate=sizes.intermediate,
            vocab=sizes.vocab,
            name=f"case{c.name.lower()}",
        )
        for c in cases
    }

    def config(case: Case, opt: str) -> TrainingConfig:
        return TrainingConfig(
            task="pretrain",
            optimizer=opt,
            precision="fp32",
            attention="flash",
            checkpointing="none",
            micro_batch=case.micro_batch,
            seq_len=case.seq_len,
        )

    timings: dict[tuple[str, str], Any] = {}
    for case in cases:
        # A throwaway step first: the first configuration of a shape pays for allocator growth.
        time_step(specs[case.name], config(case, optimizers[0]), repeats=5, max_seconds=5)
        for p in range(passes):
            order = list(optimizers) if p % 2 == 0 else list(reversed(optimizers))
            for opt in order:
                st = time_step(specs[case.name], config(case, opt), max_seconds=max_seconds)
                cells.setdefault((case.name, opt), []).append(st.median_s)
                prev = timings.get((case.name, opt))
                if prev is None or st.median_s < prev.median_s:
                    timings[(case.name, opt)] = st
                log(f"  {case.name} {opt:13s} pass {p + 1}: {st.median_s * 1e3:8.1f} ms")
    rows = []
    per_case = []
    for case in cases:
        spec = specs[case.name]
        preds, meas = [], []
        for opt in optimizers:
            st = timings[(case.name, opt)]
            pr = predict(spec, config(case, opt), cache, hw)
            err = (pr.seconds - st.median_s) / st.median_s
            preds.append(pr.seconds)
            meas.append(st.median_s)
            rows.append(
                {
                    "config": case.name,
                    "optimizer": opt,
                    "variant": st.optimizer_variant,
                    "predicted_s": pr.seconds,
                    "measured_s": st.median_s,
                    "measured_iqr_s": st.iqr_s,
                    "measured_pass_medians_s": cells[(case.name, opt)],
                    "repeats": st.repeats,
                    "error_pct": 100 * err,
                    "source": pr.source.value,
                    "components_s": {k: v.seconds for k, v in pr.components.items()},
                }
            )
        per_case.append(
            {
                "config": case.name,
                "layers": case.layers,
                "micro_batch": case.micro_batch,
                "seq_len": case.seq_len,
                "parameters": spec.parameter_count(),
                "kendall_tau": kendall_tau(preds, meas),
                "predicted_order": [o for _, o in sorted(zip(preds, optimizers, strict=True))],
                "measured_order": [o for _, o in sorted(zip(meas, optimizers, strict=True))],
            }
        )
    median_err = statistics.median(abs(r["error_pct"]) for r in rows)
    return {
        "benchmark": "predict_vs_measure",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "note": (
            "The evaluated configurations are not the calibrated ones: the calibration ran on "
            f"a {sizes.calib_layers}-layer decoder with the same widths (the cache is keyed by "
            "layer widths), its layer timing at its own token count and its attention fit at "
            "its own sequence lengths; each evaluated configuration has its own depth, "
            "sequence length and micro-batch."
        ),
        "widths": sizes.model_dump(),
        "calibration": {
            "spec": calib_spec.id,
            "seconds": round(calib_s, 1),
            "layer_tokens": [lt.tokens for lt in shape_results.layers],
            "attention_seq_lens": sorted({s for f in shape_results.attention for s in f.seq_lens}),
            "optimizers": sorted({o.optimizer for o in shape_results.optimizers}),
            "warnings": cache.warnings,
            "fast_bf16": cache.fast_bf16,
            "gemm_gflops": cache.gemm_gflops,
            "copy_gb_s": cache.copy_gb_s,
        },
        "cases": per_case,
        "rows": rows,
        "median_abs_error_pct": median_err,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "threads": _threads(),
        "other_cpu_share": meter.other_share(),
    }


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def format_table(result: dict[str, Any]) -> str:
    """The result as a Markdown table plus the per-configuration tau and the median error."""
    lines = [
        "| config | optimizer | predicted ms | measured ms (IQR) | error % |",
        "|---|---|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['config']} | {r['optimizer']} | {r['predicted_s'] * 1e3:.1f} | "
            f"{r['measured_s'] * 1e3:.1f} ({r['measured_iqr_s'] * 1e3:.1f}) | "
            f"{r['error_pct']:+.1f} |"
        )
    lines.append("")
    for c in result["cases"]:
        lines.append(
            f"config {c['config']}: {c['layers']} layers, micro-batch {c['micro_batch']}, "
            f"seq {c['seq_len']}, {c['parameters'] / 1e6:.1f}M params: "
            f"Kendall tau = {c['kendall_tau']:.2f}"
        )
        lines.append(f"  predicted order: {' < '.join(c['predicted_order'])}")
        lines.append(f"  measured order:  {' < '.join(c['measured_order'])}")
    lines.append(f"median |error| = {result['median_abs_error_pct']:.1f}%")
    return "\n".join(lines)


def main() -> None:
    """Command line: run at the full sizes and write JSON to --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON result path")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--optimizers",
        default="sgd,sgd-momentum,adamw,lion,adafactor,mezo",
        help="comma-separated optimizer ids (each is calibrated)",
    )
    args = parser.parse_args()
    opts = tuple(args.optimizers.split(","))
    use_threads(args.threads)
    result = run(FULL, FULL_CASES, opts, passes=args.passes)
    print(result["note"])
    print(format_table(result))
    share = result["other_cpu_share"]
    print(
        f"wall time {result['wall_s']} s, {result['threads']} thread(s), other processes used "
        f"{share if share is None else f'{share:.0%}'} of the CPU"
    )
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
