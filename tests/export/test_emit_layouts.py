"""Exports carry the layout: torchtitan TOML and Megatron-LM arguments for TP/PP/EP plans,
HSDP and NVMe in every engine that can say them, refusals where an engine cannot.

The key and flag lists are the engines' own, dumped from their sources into
tests/fixtures/engines/ (each file names its repository, tag, commit and method).
"""

from __future__ import annotations

import itertools
import json
import shlex
import sys
from typing import Any

import pytest

from advisor.config import (
    Attention,
    Checkpointing,
    Offload,
    Precision,
    Sharding,
    Stack,
    Task,
    TrainingConfig,
)
from advisor.errors import UserError
from advisor.export import (
    EmitTarget,
    accelerate_emission,
    emit_config,
    emit_deepspeed,
    emit_megatron,
    emit_torchtitan,
    torch_emission,
)
from tests.paths import FIXTURES_DIR

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the project's CI runs 3.11
    tomllib = pytest.importorskip("tomli")

FIXTURES = FIXTURES_DIR / "engines"
TORCHTITAN = json.loads((FIXTURES / "torchtitan_v0.2.2_job_config.json").read_text())
MEGATRON = json.loads((FIXTURES / "megatron_core_v0.19.0_flags.json").read_text())
TT_KEYS: dict[str, dict[str, Any]] = TORCHTITAN["keys"]
MEG_FLAGS: dict[str, dict[str, Any]] = MEGATRON["flags"]


def test_fixtures_name_their_source() -> None:
    assert "73a0e6979dd10b6b1904098eb3c8f62c18ab87ce" in TORCHTITAN["source"]
    assert "5be9626709af2722333bf54797c954c09edeada3" in MEGATRON["source"]
    # Spot checks that the dumps are the real thing, not a list written to fit the emitter.
    assert len(TT_KEYS) > 100 and len(MEG_FLAGS) > 800
    assert TT_KEYS["parallelism.pipeline_parallel_schedule"]["type"] == "str"
    assert MEG_FLAGS["--recompute-granularity"]["choices"] == ["full", "selective"]


def _layout_grid() -> list[tuple[TrainingConfig, int]]:
    """TP x PP x virtual stages x sharding x checkpointing x precision on 64 GPUs."""
    out = []
    for tp, pp, vs, sharding, ckpt, precision, stack in itertools.product(
        (1, 2, 8),
        (1, 4),
        (1, 2),
        (Sharding.NONE, Sharding.ZERO1, Sharding.FSDP, Sharding.HSDP),
        Checkpointing,
        (Precision.BF16_MIXED, Precision.FP8_MIXED, Precision.AMP_FP16),
        Stack,
    ):
        if vs > 1 and pp == 1:
            continue
        gpus = 64 // (tp * pp)
        config = TrainingConfig(
            task=Task.PRETRAIN,
            tensor_parallel=tp,
            pipeline_parallel=pp,
            virtual_stages=vs,
            gpus=gpus,
            sharding=sharding,
            checkpointing=ckpt,
            precision=precision,
            stack=stack,
            micro_batch=2,
            grad_accumulation=8,
            seq_len=4096,
        )
        out.append((config, 8))
    return out


LAYOUTS = _layout_grid()


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_torchtitan(text: str) -> dict[str, Any]:
    flat = _flatten(tomllib.loads(text))
    for key, value in flat.items():
        assert key in TT_KEYS, f"{key} is not a torchtitan v0.2.2 JobConfig field"
        choices = TT_KEYS[key].get("choices")
        if choices:
            assert value in choices, (key, value, choices)
    return flat


def test_torchtitan_toml_uses_only_job_config_keys() -> None:
    checked = 0
    for config, nodes in LAYOUTS:
        emission = emit_torchtitan(config, nodes=nodes, num_layers=32)
        flat = _check_torchtitan(emission.text)
        expressed = emission.expressed_config
        # ParallelDims: replicate x shard x tp x pp = world size.
        world = (
            flat["parallelism.data_parallel_replicate_degree"]
            * flat["parallelism.data_parallel_shard_degree"]
            * flat["parallelism.tensor_parallel_degree"]
            * flat["parallelism.pipeline_parallel_degree"]
        )
        assert world == config.layout.world_size == 64
        assert flat["parallelism.tensor_parallel_degree"] == config.layout.tensor_parallel
        assert flat["parallelism.pipeline_parallel_degree"] == config.layout.pipeline_parallel
        # The global batch is the plan's: micro x accumulation x data-parallel degree.
        assert flat["training.global_batch_size"] == 2 * 8 * config.layout.data_parallel
        if config.layout.pipeline_parallel > 1:
            schedule = "Interleaved1F1B" if config.layout.virtual_stages > 1 else "1F1B"
            assert flat["parallelism.pipeline_parallel_schedule"] == schedule
            n_micro = (
                flat["training.local_batch_size"]
                // flat["parallelism.pipeline_parallel_microbatch_size"]
            )
            assert n_micro == config.batch.grad_accumulation
        else:
            assert "parallelism.pipeline_parallel_schedule" not in flat
        mode = flat["activation_checkpoint.mode"]
        assert (
            mode
            == {
                "none": "none",
                "full": "full",
                "selective": "selective",
                "selective-layer": "selective",
                "selective-op": "selective",
            }[config.savers.checkpointing.value]
        )
        if config.savers.checkpointing is Checkpointing.SELECTIVE_LAYER:
            option = flat["activation_checkpoint.selective_ac_option"]
            assert option == str(config.savers.ac_frequency)
        # Only what torchtitan cannot do moves the plan (fp16 -> bf16, ZeRO-1 -> ZeRO-2).
        assert expressed.layout.tensor_parallel == config.layout.tensor_parallel
        assert expressed.layout.pipeline_parallel == config.layout.pipeline_parallel
        assert emission.differs is (
            config.precision is Precision.AMP_FP16 or config.layout.sharding is Sharding.ZERO1
        )
        checked += 1
    assert checked == len(LAYOUTS)


@pytest.mark.heavy
def test_torchtitan_schedules_exist_in_torch() -> None:
    torch_pipelining = pytest.importorskip("torch.distributed.pipelining.schedules")
    for name in ("1F1B", "Interleaved1F1B"):
        assert torch_pipelining.get_schedule_class(name) is not None


def test_torchtitan_interleaved_stage_count() -> None:
    # torchtitan builds ceil((layers + 2) / layers_per_stage) stages (embedding and output
    # count as one block each): 4 ranks x 4 virtual stages of an 80-layer model.
    config = TrainingConfig(
        task=Task.PRETRAIN, gpus=2, pipeline_parallel=4, virtual_stages=4, grad_accumulation=16
    )
    for layers in (80, 61, 126, 32):
        flat = _check_torchtitan(emit_torchtitan(config, num_layers=layers).text)
        per_stage = flat["parallelism.pipeline_parallel_layers_per_stage"]
        first = flat["parallelism.pipeline_parallel_first_stage_less_layers"]
        last = flat["parallelism.pipeline_parallel_last_stage_less_layers"]
        effective = layers + first + last
        assert -(-effective // per_stage) == 16, layers
        # torchtitan's balance check: no weight above the blocks per stage.
        assert max(first, last) <= effective // 16
    with pytest.raises(UserError, match="layer count"):
        emit_torchtitan(config)


def test_torchtitan_hsdp_and_expert_parallel() -> None:
    config = TrainingConfig(
        task=Task.PRETRAIN, gpus=16, sharding=Sharding.HSDP, expert_parallel=8, micro_batch=1
    )
    flat = _check_torchtitan(emit_torchtitan(config, nodes=2).text)
    # Shard inside a node (8 ranks), replicate across the 2 nodes (Zhao et al. 2023).
    assert flat["parallelism.data_parallel_replicate_degree"] == 2
    assert flat["parallelism.data_parallel_shard_degree"] == 8
    assert flat["parallelism.expert_parallel_degree"] == 8
    # An expert degree torchtitan's mesh cannot build is a stated change (the experts
    # sharded like any weight), refused by --emit without --force.
    emission = emit_torchtitan(config.with_(expert_parallel=3), nodes=2)
    assert emission.differs and "device mesh" in emission.reason
    assert "parallelism.expert_parallel_degree" not in _check_torchtitan(emission.text)


def test_torchtitan_offload_and_optimizer_differences_are_stated() -> None:
    config = TrainingConfig(
        task=Task.PRETRAIN, gpus=8, sharding=Sharding.FSDP, offload=Offload.OPTIMIZER
    )
    emission = emit_torchtitan(config)
    flat = _check_torchtitan(emission.text)
    assert flat["training.enable_cpu_offload"] is True
    # FSDP2's CPU offload moves parameters too: a different plan, said and priced.
    assert emission.differs and emission.expressed_config.savers.offload is Offload.OPTIMIZER_PARAMS
    assert "offloads parameters" in emission.reason
    lion = emit_torchtitan(config.with_(offload=Offload.NONE, optimizer="lion"))
    assert lion.differs and lion.expressed_config.optimizer == "adamw"
    assert _check_torchtitan(lion.text)["optimizer.name"] == "AdamW"


def _megatron_args(text: str) -> list[tuple[str, str | None]]:
    body = text.split("MEGATRON_ARGS=(", 1)[1].split("\n)", 1)[0]
    out: list[tuple[str, str | None]] = []
    for line in body.strip().splitlines():
        parts = shlex.split(line)
        assert parts[0].startswith("--") and len(parts) in (1, 2), line
        out.append((parts[0], parts[1] if len(parts) == 2 else None))
    return out


def test_megatron_arguments_are_known_flags() -> None:
    checked = 0
    for config, nodes in LAYOUTS:
        emission = emit_megatron(config, nodes=nodes)
        args = _megatron_args(emission.text)
        flags = [flag for flag, _ in args]
        assert len(flags) == len(set(flags)), flags
        for flag, value in args:
            assert flag in MEG_FLAGS, f"{flag} is not a Megatron-LM core_v0.19.0 argument"
            spec = MEG_FLAGS[flag]
            assert spec["takes_value"] is (value is not None), flag
            if spec["choices"]:
                assert value in spec["choices"], (flag, value)
        got = dict(args)
        assert got["--tensor-model-parallel-size"] == str(config.layout.tensor_parallel)
        assert got["--pipeline-model-parallel-size"] == str(config.layout.pipeline_parallel)
        assert ("--sequence-parallel" in got) is (config.layout.tensor_parallel > 1)
        if config.layout.virtual_stages > 1:
            assert got["--num-virtual-stages-per-pipeline-rank"] == str(
                config.layout.virtual_stages
            )
        assert int(got["--global-batch-size"]) == 2 * 8 * config.layout.data_parallel
        if config.savers.checkpointing is Checkpointing.FULL:
            assert got["--recompute-granularity"] == "full"
            assert got["--recompute-method"] == "uniform"
        checked += 1
    assert checked == len(LAYOUTS)


def test_megatron_sharding_and_offload() -> None:
    hsdp = TrainingConfig(task=Task.PRETRAIN, gpus=32, sharding=Sharding.HSDP)
    got = dict(_megatron_args(emit_megatron(hsdp, nodes=4).text))
    assert got["--data-parallel-sharding-strategy"] == "optim_grads_params"
    assert got["--num-distributed-optimizer-instances"] == "4"  # 4 replicas of 8-rank shards
    zero1 = dict(_megatron_args(emit_megatron(hsdp.with_(sharding=Sharding.ZERO1)).text))
    assert "--use-distributed-optimizer" in zero1 and "--use-megatron-fsdp" not in zero1
    offload = TrainingConfig(task=Task.PRETRAIN, offload=Offload.OPTIMIZER_PARAMS)
    emission = emit_megatron(offload)
    got = dict(_megatron_args(emission.text))
    # The hybrid-device optimizer needs the precision-aware optimizer (arguments.py asserts).
    assert "--optimizer-cpu-offload" in got and "--use-precision-aware-optimizer" in got
    assert emission.differs and emission.expressed_config.savers.offload is Offload.OPTIMIZER


def test_megatron_pretraining_hyperparameters() -> None:
    got = dict(_megatron_args(emit_megatron(TrainingConfig(task=Task.PRETRAIN)).text))
    # GPT-3 / Llama 2 pre-training AdamW (advisor.export.hyperparams): Megatron's adam is AdamW.
    assert got["--optimizer"] == "adam"
    assert (got["--adam-beta1"], got["--adam-beta2"]) == ("0.9", "0.95")
    assert got["--weight-decay"] == "0.1"


@pytest.mark.parametrize("target", [EmitTarget.DEEPSPEED, EmitTarget.ACCELERATE])
def test_deepspeed_and_accelerate_state_the_data_parallel_form(target: EmitTarget) -> None:
    # Their config files have no TP/PP degrees: the file runs every device data parallel, and
    # says so (never silently), pointing at torchtitan/Megatron for the ranked layout.
    for tp, pp in ((8, 1), (1, 4), (8, 4)):
        config = TrainingConfig(
            gpus=2, tensor_parallel=tp, pipeline_parallel=pp, grad_accumulation=32
        )
        emission = emit_config(target, config, nodes=2)
        expressed = emission.expressed_config
        assert emission.differs
        assert "--emit torchtitan or --emit megatron" in emission.reason
        assert (expressed.layout.tensor_parallel, expressed.layout.pipeline_parallel) == (1, 1)
        assert expressed.layout.data_parallel == config.layout.world_size
        # The global batch stays the plan's: fewer accumulation steps on more ranks.
        assert expressed.batch.grad_accumulation * expressed.layout.data_parallel == 32 * 2
    ds = emit_deepspeed(TrainingConfig(gpus=2, tensor_parallel=8, grad_accumulation=32))
    assert ds.config["train_batch_size"] == 64 and ds.config["gradient_accumulation_steps"] == 4
    # TP shards the parameters and a TP group shares each micro-batch: the data-parallel form
    # shards parameters too (ZeRO-3 / FSDP) and gives each rank 1/TP of the micro-batch.
    assert ds.expressed_config.layout.sharding is Sharding.ZERO3
    tp4 = TrainingConfig(gpus=2, tensor_parallel=4, micro_batch=8, grad_accumulation=2)
    acc = accelerate_emission(tp4).expressed_config
    assert acc.layout.sharding is Sharding.FSDP and acc.batch.micro_batch == 2
    assert (
        acc.batch.micro_batch * acc.batch.grad_accumulation * acc.layout.data_parallel == 8 * 2 * 2
    )


def test_gpu_engines_refuse_cpu_plans() -> None:
    for target in (EmitTarget.TORCHTITAN, EmitTarget.MEGATRON):
        with pytest.raises(UserError, match="CPU"):
            emit_config(target, TrainingConfig(task=Task.PRETRAIN), cpu=True)


def test_torch_snippet_names_the_layout_it_does_not_set_up() -> None:
    emission = torch_emission(TrainingConfig(gpus=2, tensor_parallel=4, pipeline_parallel=2))
    assert any("--emit torchtitan or --emit megatron" in note for note in emission.notes)


def test_adapters_are_refused_where_the_engine_has_none() -> None:
    for target in (EmitTarget.TORCHTITAN, EmitTarget.MEGATRON):
        with pytest.raises(UserError):
            emit_config(target, TrainingConfig(task=Task.LORA, tensor_parallel=2))


def test_accelerate_hsdp_is_hybrid_shard() -> None:
    config = TrainingConfig(sharding=Sharding.HSDP, gpus=16)
    emission = accelerate_emission(config, nodes=2)
    assert "HYBRID_SHARD" in emission.text and not emission.differs
    # A shard group other than a node is not what FSDP1's HYBRID_SHARD builds: stated.
    odd = accelerate_emission(config.with_(shard_group=4), nodes=2)
    assert odd.differs and "within a node" in odd.reason


def test_deepspeed_hsdp_is_stated_as_full_zero3() -> None:
    emission = emit_deepspeed(TrainingConfig(sharding=Sharding.HSDP, gpus=16), nodes=2)
    assert emission.config["zero_optimization"]["stage"] == 3
    assert emission.differs and emission.expressed_config.layout.sharding is Sharding.ZERO3
    single_node = emit_deepspeed(TrainingConfig(sharding=Sharding.HSDP, gpus=8))
    # One shard group spanning every rank is plain full sharding: the same plan.
    assert not single_node.differs


def test_attention_maps_to_megatron_backends() -> None:
    for attention, backend in (
        (Attention.FLASH, "flash"),
        (Attention.MEM_EFFICIENT, "fused"),
        (Attention.EAGER, "unfused"),
    ):
        got = dict(_megatron_args(emit_megatron(TrainingConfig(attention=attention)).text))
        assert got["--attention-backend"] == backend


def test_every_export_states_the_plan_it_sets_up() -> None:
    # For every engine and a grid of plans: the file either sets up the ranked plan, or says
    # which plan it sets up and why; it never changes TP/PP silently (it refuses instead).
    from advisor.export import same_plan

    checked = 0
    flags = [{}, {"optimizer_in_backward": True}, {"activation_offload": True}]
    for target, sharding, offload, extra in itertools.product(EmitTarget, Sharding, Offload, flags):
        config = TrainingConfig(
            task=Task.PRETRAIN, gpus=16, sharding=sharding, offload=offload, **extra
        )
        emission = emit_config(target, config, nodes=2, num_layers=32)
        expressed = emission.expressed_config
        assert emission.differs is (not same_plan(config, expressed))
        assert emission.differs is bool(emission.reason), (target, config, emission.reason)
        assert (expressed.layout.tensor_parallel, expressed.layout.pipeline_parallel) == (1, 1)
        if target is EmitTarget.DEEPSPEED and config.savers.optimizer_in_backward:
            assert emission.differs and not expressed.savers.optimizer_in_backward
        checked += 1
    assert checked == len(EmitTarget) * len(Sharding) * len(Offload) * len(flags)


def test_megatron_emerging_optimizers_without_megatron_fsdp() -> None:
    # core_v0.19.0 arguments.py asserts that lion/muon do not run under Megatron-FSDP.
    fsdp = emit_megatron(
        TrainingConfig(task=Task.PRETRAIN, optimizer="lion", sharding=Sharding.FSDP, gpus=8)
    )
    got = dict(_megatron_args(fsdp.text))
    assert got["--optimizer"] == "adam" and fsdp.differs
    ddp = emit_megatron(TrainingConfig(task=Task.PRETRAIN, optimizer="lion", gpus=8))
    got = dict(_megatron_args(ddp.text))
    assert got["--optimizer"] == "lion" and "--lion-beta2" in got and not ddp.differs


def test_tp_comm_overlap_is_exported_as_the_cost_assumed() -> None:
    # The fused stack's cost hides part of the TP collectives (async TP / TE userbuffers,
    # Wang et al. 2023); the exports turn the same overlap on, and leave it off under hf.
    fused = TrainingConfig(task=Task.PRETRAIN, tensor_parallel=4, gpus=2, stack=Stack.FUSED)
    hf = fused.with_(stack=Stack.HF)
    assert fused.kernels.tp_overlapped and not hf.kernels.tp_overlapped
    assert "--tp-comm-overlap" in dict(_megatron_args(emit_megatron(fused).text))
    assert "--tp-comm-overlap" not in dict(_megatron_args(emit_megatron(hf).text))
    tt = tomllib.loads(emit_torchtitan(fused).text)
    assert tt["parallelism"]["enable_async_tensor_parallel"] is True
    off = fused.with_(tp_comm_overlap=False)
    assert not tomllib.loads(emit_torchtitan(off).text)["parallelism"][
        "enable_async_tensor_parallel"
    ]
