"""The real engines accept every emitted file: DeepSpeed's and Accelerate's own loaders.

DeepSpeed 0.19.8 and Accelerate 1.15 are dev dependencies; a CPU is enough for their config
loaders (this test runs them on CI's CPU machines). ``importorskip`` is only a guard for a bare install: CI has both.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from advisor.config import (
    Checkpointing,
    Offload,
    Precision,
    Sharding,
    Task,
    TrainingConfig,
)
from advisor.export import EmitTarget, accelerate_emission, emit_config, emit_deepspeed
from tests.paths import ROOT_DIR

ds_config = pytest.importorskip("deepspeed.runtime.config")
acc_launch = pytest.importorskip("accelerate.commands.launch")

ROOT = ROOT_DIR
# The optimizers ZeRO accepts without zero_allow_untested_optimizer, as DeepSpeed builds them
# from these config types (deepspeed/runtime/zero/utils.py ZERO_SUPPORTED_OPTIMIZERS).
ZERO_TESTED_TYPES = {"Adam", "AdamW", "Adagrad", "Lion", "Muon"}


def _grid() -> list[tuple[TrainingConfig, int]]:
    """Every precision x sharding x offload x optimizer kind; checkpointing and the node count
    cycle through their values (neither interacts with the others in a config file)."""
    out = []
    cases = itertools.product(
        Precision, Sharding, Offload, ["adamw", "adam", "adamw-8bit", "sgd", "lion"]
    )
    for i, (precision, sharding, offload, optimizer) in enumerate(cases):
        config = TrainingConfig(
            precision=precision,
            sharding=sharding,
            offload=offload,
            checkpointing=list(Checkpointing)[i % len(Checkpointing)],
            optimizer=optimizer,
            gpus=8,
            micro_batch=2,
            grad_accumulation=4,
            task=Task.PRETRAIN if optimizer == "lion" else Task.FINETUNE,
        )
        out.append((config, 1 + i % 2))
    return out


GRID = _grid()


def _load_deepspeed(config_dict: dict[str, Any], world: int) -> Any:
    # DeepSpeedConfig reads the world size from torch.distributed; patch it to the plan's.
    with (
        mock.patch.object(ds_config.dist, "get_world_size", return_value=world),
        mock.patch.object(ds_config.dist, "get_rank", return_value=0),
    ):
        return ds_config.DeepSpeedConfig(config_dict)


def _value(enum_or_str: Any) -> str:
    return str(getattr(enum_or_str, "value", enum_or_str))


def test_deepspeed_config_loads_every_emitted_file() -> None:
    loaded = 0
    for config, nodes in GRID:
        emission = emit_deepspeed(config, nodes=nodes)
        ds = _load_deepspeed(emission.config, config.layout.world_size)
        assert ds.train_batch_size == config.batch.micro_batch * config.batch.grad_accumulation * 8
        stage = ds.zero_optimization_stage
        assert stage == emission.expressed_config.layout.sharding.zero_stage
        assert stage >= config.layout.sharding.zero_stage  # only ever raised
        if config.savers.offload is not Offload.NONE:
            device = _value(ds.zero_config.offload_optimizer.device)
            assert device == ("nvme" if config.savers.offload.nvme else "cpu")
        if config.savers.offload.params:
            assert _value(ds.zero_config.offload_param.device) == (
                "nvme" if config.savers.offload.nvme else "cpu"
            )
        kind = emission.config.get("optimizer", {}).get("type")
        needs_flag = stage >= 1 and kind not in ZERO_TESTED_TYPES
        assert ds.zero_allow_untested_optimizer is needs_flag, (config, kind)
        loaded += 1
    assert loaded == len(GRID)


def test_nvme_offload_writes_device_and_path() -> None:
    config = TrainingConfig(sharding=Sharding.ZERO2, offload=Offload.OPTIMIZER_PARAMS_NVME, gpus=4)
    emission = emit_deepspeed(config, nvme_path="/mnt/nvme0")
    zero = emission.config["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "nvme"
    assert zero["offload_optimizer"]["nvme_path"] == "/mnt/nvme0"
    assert zero["offload_param"] == {
        "device": "nvme",
        "nvme_path": "/mnt/nvme0",
        "pin_memory": True,
    }
    # ZeRO-Infinity's NVMe offload runs on stage 3 only (config-json): the plan moves there.
    assert zero["stage"] == 3
    assert emission.expressed_config.layout.sharding is Sharding.ZERO3
    assert emission.differs and "stage 3" in emission.reason
    ds = _load_deepspeed(emission.config, 4)
    assert ds.zero_config.offload_optimizer.nvme_path.as_posix() == "/mnt/nvme0"


_DS_INIT = """
import os, sys, json
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", LOCAL_RANK="0",
                  WORLD_SIZE="1")
import torch
import deepspeed
# The CPU backend's shared-memory all-reduce op is a speed-up only; skip its minutes-long
# first build.
sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
config = json.loads(open(sys.argv[1]).read())
model = torch.nn.Linear(8, 8)
client = torch.optim.SGD(model.parameters(), lr=0.1)  # any optimizer ZeRO has not tested
results = []
for keep in (True, False):
    cfg = dict(config)
    if not keep:
        cfg.pop("zero_allow_untested_optimizer")
    try:
        engine, *_ = deepspeed.initialize(model=model, optimizer=client, config=cfg)
        engine.backward(engine(torch.randn(4, 8)).sum())
        engine.step()
        results.append("ok")
    except AssertionError as exc:
        results.append("untested" if "untested ZeRO Optimizer" in str(exc) else repr(exc))
print("RESULT", ",".join(results))
"""


@pytest.mark.slow
def test_deepspeed_initialize_accepts_a_client_optimizer_under_zero(tmp_path: Path) -> None:
    # The real failure users hit: deepspeed.initialize asserts on a client optimizer under
    # ZeRO unless the file says zero_allow_untested_optimizer; ours does, and without the key
    # the same file fails (so the test can fail).
    config = TrainingConfig(
        optimizer="adamw-8bit", sharding=Sharding.ZERO2, precision=Precision.FP32
    )
    emission = emit_deepspeed(config)
    assert emission.config["zero_allow_untested_optimizer"] is True
    assert "optimizer" not in emission.config
    assert any("refuses it under ZeRO" in note for note in emission.notes)
    path = tmp_path / "ds_config.json"
    path.write_text(emission.to_emission().text)
    script = tmp_path / "init.py"
    script.write_text(textwrap.dedent(_DS_INIT))
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    port = str(29500 + os.getpid() % 1000)
    proc = subprocess.run(
        [sys.executable, str(script), str(path), port],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert "RESULT ok,untested" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


# ------------------------------------------------------------------------------ Accelerate


def _launch(tmp_path: Path, text: str) -> tuple[str, Any]:
    """Run `accelerate launch --config_file F train.py` up to the launcher, with the real
    argument validation, and build the plugin the training process would build from the
    launcher's environment. Returns (launcher name, plugin or args)."""
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
    from accelerate.utils import dataclasses as acc_dataclasses
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    path = tmp_path / "accelerate_config.yaml"
    path.write_text(text)
    seen: dict[str, Any] = {}

    def capture(name: str) -> Any:
        def launcher(args: Any) -> None:
            seen["name"], seen["args"] = name, args

        return launcher

    args = acc_launch.launch_command_parser().parse_args(["--config_file", str(path), "x.py"])
    with (
        mock.patch.object(acc_launch, "deepspeed_launcher", capture("deepspeed")),
        mock.patch.object(acc_launch, "multi_gpu_launcher", capture("multi_gpu")),
        mock.patch.object(acc_launch, "simple_launcher", capture("simple")),
    ):
        acc_launch.launch_command(args)
    name, args = seen["name"], seen["args"]
    if name == "deepspeed":
        _cmd, env = prepare_deepspeed_cmd_env(args)
        with mock.patch.dict(os.environ, {k: v for k, v in env.items() if "ACCELERATE" in k}):
            return name, DeepSpeedPlugin()
    if args.use_fsdp:
        env = prepare_multi_gpu_env(args)
        keep = {k: v for k, v in env.items() if k.startswith(("FSDP", "ACCELERATE"))}
        # The plugin picks the device for sync_module_states last; pretend CUDA is there.
        # Accelerate <= 1.15 asks is_cuda_available; 1.16 asks get_torch_accelerator_backend.
        if hasattr(acc_dataclasses, "get_torch_accelerator_backend"):
            cuda = mock.patch.object(
                acc_dataclasses, "get_torch_accelerator_backend", return_value=("cuda", None)
            )
        else:
            cuda = mock.patch.object(acc_dataclasses, "is_cuda_available", return_value=True)
        with (
            mock.patch.dict(os.environ, keep),
            cuda,
            mock.patch("torch.cuda.current_device", return_value=0),
        ):
            return "fsdp", FullyShardedDataParallelPlugin()
    return name, args


ACCELERATE_CASES = {
    # FSDP cannot offload only the optimizer: the ranked plan runs as ZeRO-3 + ZeRO-Offload.
    "fsdp-optimizer-offload": TrainingConfig(
        sharding=Sharding.FSDP, offload=Offload.OPTIMIZER, gpus=8, optimizer="adamw"
    ),
    "fsdp-params-offload": TrainingConfig(
        sharding=Sharding.FSDP, offload=Offload.OPTIMIZER_PARAMS, gpus=8
    ),
    "hsdp": TrainingConfig(sharding=Sharding.HSDP, gpus=16, checkpointing=Checkpointing.FULL),
    "zero2-nvme": TrainingConfig(sharding=Sharding.ZERO2, offload=Offload.OPTIMIZER_NVME, gpus=8),
    "ddp": TrainingConfig(gpus=8, precision=Precision.FP16_MIXED),
    "single": TrainingConfig(precision=Precision.AMP_BF16),
}


@pytest.mark.parametrize("name", sorted(ACCELERATE_CASES))
def test_accelerate_launch_accepts_the_file(tmp_path: Path, name: str) -> None:
    config = ACCELERATE_CASES[name]
    nodes = 2 if config.layout.data_parallel == 16 else 1
    emission = accelerate_emission(config, nodes=nodes)
    launcher, plugin = _launch(tmp_path, emission.text)
    if config.layout.sharding is Sharding.FSDP and config.savers.offload is Offload.OPTIMIZER:
        assert launcher == "deepspeed"
        zero = plugin.deepspeed_config["zero_optimization"]
        assert zero["stage"] == 3
        assert zero["offload_optimizer"]["device"] == "cpu"
        assert zero["offload_param"]["device"] == "none"
        # The ranked plan itself: FSDP full shard and ZeRO-3 shard the same states.
        assert not emission.differs
    elif config.layout.sharding is Sharding.ZERO2:
        assert launcher == "deepspeed"
        zero = plugin.deepspeed_config["zero_optimization"]
        assert zero["offload_optimizer"]["device"] == "nvme"
        assert zero["stage"] == 3 and emission.differs
    elif config.layout.sharding in (Sharding.FSDP, Sharding.HSDP):
        assert launcher == "fsdp"
        strategy = "HYBRID_SHARD" if config.layout.sharding is Sharding.HSDP else "FULL_SHARD"
        assert plugin.sharding_strategy.name == strategy
        assert plugin.cpu_offload.offload_params is config.savers.offload.params
        assert not emission.differs
    elif config.layout.data_parallel > 1:
        assert launcher == "multi_gpu"
    else:
        assert launcher == "simple"


def test_accelerate_loader_reads_every_emitted_file(tmp_path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    path = tmp_path / "accelerate_config.yaml"
    loaded = 0
    for config, nodes in GRID[::5]:  # one optimizer each: the file does not name it
        for cpu in (False, True):
            emission = accelerate_emission(config, nodes=nodes, cpu=cpu)
            path.write_text(emission.text)
            cluster = load_config_from_file(str(path))
            assert cluster.use_cpu is cpu
            assert cluster.num_processes == config.layout.world_size
            if cpu:
                assert cluster.distributed_type.value in ("NO", "MULTI_CPU")
            loaded += 1
    assert loaded == 2 * len(GRID[::5])
    seen = {(c.layout.sharding, c.savers.offload, c.precision) for c, _ in GRID[::5]}
    assert len(seen) == len(Sharding) * len(Offload) * len(Precision)


def test_cpu_plan_writes_use_cpu_true(tmp_path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    path = tmp_path / "a.yaml"
    for gpus, kind in ((1, "NO"), (4, "MULTI_CPU")):
        config = TrainingConfig(gpus=gpus, precision=Precision.AMP_BF16)
        emission = emit_config(EmitTarget.ACCELERATE, config, cpu=True)
        path.write_text(emission.text)
        cluster = load_config_from_file(str(path))
        assert cluster.use_cpu is True
        assert cluster.distributed_type.value == kind
        assert not emission.differs
    gpu = emit_config(EmitTarget.ACCELERATE, TrainingConfig())
    path.write_text(gpu.text)
    assert load_config_from_file(str(path)).use_cpu is False


def test_deepspeed_loads_the_data_parallel_form_of_a_tp_pp_plan(tmp_path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = TrainingConfig(
        gpus=4, tensor_parallel=4, pipeline_parallel=2, micro_batch=4, grad_accumulation=8
    )
    emission = emit_deepspeed(config, nodes=4)
    ds = _load_deepspeed(emission.config, config.layout.world_size)
    assert ds.zero_optimization_stage == 3 and emission.differs
    path = tmp_path / "a.yaml"
    path.write_text(accelerate_emission(config, nodes=4).text)
    assert load_config_from_file(str(path)).num_processes == config.layout.world_size
