"""benchmarks/ftmem.py: published training-memory runs against `estimate`.

The rows are published measurements (benchmarks/data/ftmem_runs.yaml); the checks compare the
estimate with them, and check that every row says where its number comes from.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.ftmem import DATA, UNITS, load_ooms, load_runs, main, run_all, signed_error


def test_every_run_cites_a_source_url_and_where_in_it() -> None:
    sources, runs = load_runs()
    assert len(runs) >= 9 and len(sources) >= 4  # counted, so a silently emptied file fails
    for run in runs:
        src = sources[run["source"]]
        assert src["url"].startswith("https://"), run["id"]
        assert run["where"].strip(), run["id"]
    assert {r["source"] for r in runs} == set(sources)  # no source without a run
    ooms = load_ooms()
    assert len(ooms) >= 10
    assert all(o["where"].strip() and o["source"] in sources for o in ooms)


def test_a_broken_file_reports_every_problem_together(tmp_path: Path) -> None:
    bad = tmp_path / "runs.yaml"
    bad.write_text(
        "sources:\n  s: {title: t, url: 'ftp://x'}\n"
        "runs:\n  - {id: a, source: nope, measured: guessed, unit: MB, model: llama-2-7b}\n"
    )
    with pytest.raises(ValueError) as err:
        load_runs(bad)
    text = str(err.value)
    for part in ("no http(s) url", "missing where", "unknown source", "measured must", "unit"):
        assert part in text


def test_error_is_zero_inside_an_unstated_recompute_range_else_to_the_nearer_end() -> None:
    levels = {"none": 30 * 2**30, "selective": 25 * 2**30, "full": 20 * 2**30}
    assert signed_error(22 * 2**30, levels) == 0.0
    assert signed_error(40 * 2**30, levels) == pytest.approx(-0.25)
    assert signed_error(10 * 2**30, levels) == pytest.approx(1.0)


def test_three_published_runs_are_predicted_within_20_percent() -> None:
    # torchao's Llama2-7B full-bf16 fused-AdamW row (51.6 GiB allocated, A100), GaLore's
    # single-GPU LLaMA-7B 8-bit per-layer row (22.72 GB on an RTX 4090) and fms-acceleration's
    # Mistral-7B full fp16 fine-tune on one A100 80GB (72,971,724,288 B max allocated).
    ids = {"torchao-llama2-7b-adamw-fused", "galore-7b-bs1", "fms-full-mistral-1gpu-bs4-alloc"}
    result = run_all(ids)
    assert {r["id"] for r in result["rows"]} == ids
    _, runs = load_runs()
    published = {r["id"]: r["value"] * UNITS[r["unit"]] / 2**30 for r in runs if r["id"] in ids}
    for row in result["rows"]:
        assert row["measured_gib"] == pytest.approx(published[row["id"]], abs=0.01)
        assert abs(row["error"]) <= 0.20, row
        assert row["fits"], row  # both ran
    torchao = next(r for r in result["rows"] if r["id"].startswith("torchao"))
    assert set(torchao["predicted_gib"]) == {"none", "selective", "full"}  # unstated: range


def test_a_run_the_source_reports_out_of_memory_is_predicted_not_to_fit() -> None:
    # fms-acceleration: Llama-2-70B full fp16 fine-tuning on one A100 80GB left no train
    # metrics and nvidia-smi at 80,837 MiB.
    result = run_all({"fms-full-llama2-70b-1gpu-bs4-oom"})
    assert [r["id"] for r in result["ooms"]] == ["fms-full-llama2-70b-1gpu-bs4-oom"]
    assert result["oom_predicted_to_fit"] == []


def test_main_writes_the_date_command_and_per_source_figures(tmp_path: Path) -> None:
    out = tmp_path / "ftmem.json"
    main(["--only", "galore-7b-bs1", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["date"] and doc["command"].startswith("python -m benchmarks.ftmem")
    assert set(doc["by_source"]) == {"galore-repo"}
    assert set(doc["by_measure"]) == {"unstated"}
    assert doc["by_source"]["galore-repo"]["runs"] == 1
    assert DATA.exists()


@pytest.mark.heavy
def test_allocator_recompute_replays_a_checkpointed_step() -> None:
    # benchmarks/allocator_recompute.py on a tiny shape: the replay of a real recorded step
    # reserves at least what it allocates, and checkpointing lowers the allocated peak.
    from advisor.memory.allocator import CachingAllocator
    from benchmarks.allocator_fit import record_trace
    from benchmarks.allocator_recompute import _step

    peaks = {}
    for ckpt in (False, True):
        params, step, weights = _step(256, 4, 128, 2, lora=False, ckpt=ckpt)
        replay = CachingAllocator().replay(record_trace(params, step))
        assert weights > 0
        assert replay.peak_requested <= replay.peak_allocated <= replay.peak_reserved
        peaks[ckpt] = replay.peak_allocated
    assert peaks[True] < peaks[False]
