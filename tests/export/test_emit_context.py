"""Context parallelism in the exports: Megatron-LM's and torchtitan's own argument names (the
dumped fixtures of their argument parsers), DeepSpeed's loader with Ulysses'
``sequence_parallel_size``, and the engines that cannot split sequences saying so."""

from __future__ import annotations

import json
import shlex
import sys
from typing import Any
from unittest import mock

import pytest

from advisor.config import ContextParallelKind, Sharding, Stack, Task, TrainingConfig
from advisor.export import accelerate_emission, emit_deepspeed, emit_megatron, emit_torchtitan
from tests.paths import FIXTURES_DIR

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the project's CI runs 3.11
    tomllib = pytest.importorskip("tomli")

FIXTURES = FIXTURES_DIR / "engines"
TT_KEYS: dict[str, dict[str, Any]] = json.loads(
    (FIXTURES / "torchtitan_v0.2.2_job_config.json").read_text()
)["keys"]
MEG_FLAGS: dict[str, dict[str, Any]] = json.loads(
    (FIXTURES / "megatron_core_v0.19.0_flags.json").read_text()
)["flags"]
RING, ULYSSES = ContextParallelKind.RING, ContextParallelKind.ULYSSES


def _config(**kw: Any) -> TrainingConfig:
    base: dict[str, Any] = dict(
        task=Task.PRETRAIN,
        seq_len=131072,
        micro_batch=1,
        grad_accumulation=4,
        gpus=4,
        context_parallel=8,
        sharding=Sharding.FSDP,
        stack=Stack.FUSED,
    )
    return TrainingConfig(**(base | kw))


def _megatron_args(text: str) -> dict[str, str | None]:
    body = text.split("MEGATRON_ARGS=(", 1)[1].rsplit(")", 1)[0]
    out: dict[str, str | None] = {}
    for line in body.strip().splitlines():
        parts = shlex.split(line)
        out[parts[0]] = parts[1] if len(parts) > 1 else None
    return out


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize(("kind", "comm"), [(RING, "p2p"), (ULYSSES, "a2a")])
def test_megatron_sets_context_parallel_size_and_comm_type(
    kind: ContextParallelKind, comm: str
) -> None:
    config = _config(context_parallel_kind=kind, tensor_parallel=2, gpus=2)
    emission = emit_megatron(config, nodes=4)
    args = _megatron_args(emission.text)
    for flag in args:
        assert flag in MEG_FLAGS, f"{flag} is not a Megatron-LM core_v0.19.0 argument"
    assert args["--context-parallel-size"] == "8"
    # arguments.py: "--cp-comm-type ... p2p, a2a, allgather or a2a+p2p".
    assert args["--cp-comm-type"] == comm
    # The global batch counts data-parallel replicas only: CP ranks share their samples.
    assert args["--global-batch-size"] == str(1 * 4 * 2)
    assert "x context 8" in emission.text
    assert not emission.differs


def test_megatron_without_context_parallel_writes_no_cp_flags() -> None:
    args = _megatron_args(emit_megatron(_config(context_parallel=1, gpus=32), nodes=4).text)
    assert "--context-parallel-size" not in args and "--cp-comm-type" not in args


def test_torchtitan_context_parallel_degree() -> None:
    emission = emit_torchtitan(_config(), nodes=4, num_layers=32)
    flat = _flatten(tomllib.loads(emission.text))
    for key, value in flat.items():
        assert key in TT_KEYS, f"{key} is not a torchtitan v0.2.2 JobConfig field"
        if TT_KEYS[key].get("choices"):
            assert value in TT_KEYS[key]["choices"], (key, value)
    assert flat["parallelism.context_parallel_degree"] == 8
    # ParallelDims: replicate x shard x cp x tp x pp = world size.
    world = (
        flat["parallelism.data_parallel_replicate_degree"]
        * flat["parallelism.data_parallel_shard_degree"]
        * flat["parallelism.context_parallel_degree"]
        * flat["parallelism.tensor_parallel_degree"]
        * flat["parallelism.pipeline_parallel_degree"]
    )
    assert world == 32
    assert flat["training.global_batch_size"] == 1 * 4 * 4
    assert not emission.differs


def test_torchtitan_states_what_its_context_parallelism_changes() -> None:
    # torchtitan shards the parameters over the CP ranks (FSDP over dp_shard_cp) and runs
    # ring attention only.
    replicated = emit_torchtitan(_config(sharding=Sharding.NONE), nodes=4, num_layers=32)
    assert replicated.differs and "context-parallel ranks" in replicated.reason
    assert replicated.expressed_config.layout.sharding is Sharding.HSDP
    assert replicated.expressed_config.layout.shard_group == 8
    flat = _flatten(tomllib.loads(replicated.text))
    assert flat["parallelism.data_parallel_replicate_degree"] == 4
    assert flat["parallelism.data_parallel_shard_degree"] == 1
    ulysses = emit_torchtitan(_config(context_parallel_kind=ULYSSES), nodes=4, num_layers=32)
    assert ulysses.differs and "ring attention" in ulysses.reason
    assert ulysses.expressed_config.layout.context_parallel_kind is RING


@pytest.mark.heavy
def test_deepspeed_ulysses_loads_with_sequence_parallel_size() -> None:
    ds_config = pytest.importorskip("deepspeed.runtime.config")
    config = _config(context_parallel_kind=ULYSSES, sharding=Sharding.ZERO3)
    emission = emit_deepspeed(config, nodes=4)
    assert emission.config["sequence_parallel_size"] == 8
    assert not emission.differs
    with (
        mock.patch.object(ds_config.dist, "get_world_size", return_value=32),
        mock.patch.object(ds_config.dist, "get_rank", return_value=0),
    ):
        loaded = ds_config.DeepSpeedConfig(emission.config)
    # DeepSpeedConfig divides the world by sequence_parallel_size: 4 data-parallel ranks.
    assert loaded.world_size == 4
    assert loaded.train_batch_size == 1 * 4 * 4
    assert any("UlyssesSPAttentionHF" in n for n in emission.notes)


@pytest.mark.parametrize("engine", ["deepspeed", "accelerate"])
def test_engines_without_ring_attention_say_so(engine: str) -> None:
    config = _config()
    if engine == "deepspeed":
        emission: Any = emit_deepspeed(config, nodes=4)
    else:
        emission = accelerate_emission(config, nodes=4)
    assert emission.differs
    assert "context parallelism 8" in emission.reason
    expressed = emission.expressed_config.layout
    assert expressed.context_parallel == 1 and expressed.data_parallel == 32
