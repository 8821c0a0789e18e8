"""Golden outputs: representative command lines print and write exactly what they did.

The cases and the recorder live in ``benchmarks/golden.py``; after a deliberate change of
output, record again with ``python -m benchmarks.golden`` and say which fields changed.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import golden


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, object]]:
    return golden.run_all(list(golden.ALL))


def test_every_case_is_recorded() -> None:
    recorded = {p.stem for p in golden.GOLDEN.glob("*.json")}
    assert recorded == set(golden.ALL)


def test_the_cases_span_what_the_issue_asks() -> None:
    argvs = [" ".join(a) for a in golden.ALL.values()]
    for engine in ("deepspeed", "accelerate", "torch", "torchtitan", "megatron"):
        assert any(f"--emit {engine}" in a for a in argvs), engine
    for task in ("pretrain", "finetune", "lora", "qlora"):
        assert any(f"--task {task}" in a for a in argvs), task
    for objective in ("speed", "memory", "quality", "time-to-target"):
        assert any(f"--objective {objective}" in a for a in argvs), objective
    assert any("--nodes 2048" in a for a in argvs)  # 16,384 GPUs


@pytest.mark.parametrize("name", list(golden.ALL))
def test_output_is_unchanged(name: str, results: dict[str, dict[str, object]]) -> None:
    want = json.loads(golden.golden_path(name).read_text(encoding="utf-8"))
    got = json.loads(json.dumps(results[name]))
    assert got["exit"] == want["exit"]
    assert got["files"] == want["files"]
    assert got["stdout"] == want["stdout"]
    assert got["stderr"] == want["stderr"]
