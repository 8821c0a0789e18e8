"""One prepared GPU check (under 5 minutes on an H100): real fine-tuning steps and an attention
sweep measured against what optadvise predicts for the same shapes.

Fine-tuning: a Llama-shaped model (Hugging Face LlamaForCausalLM built from a config, random
bf16 weights, SDPA attention) trained for a few steps per case: LoRA (rank 16 on q,k,v,o),
QLoRA (the decoder's linears as bitsandbytes NF4 with double quantisation, LoRA on top) when
bitsandbytes' CUDA kernels load, full fine-tuning with torch's AdamW (foreach), with
bitsandbytes' 8-bit AdamW and with its paged 8-bit AdamW. Each case reads
``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` over the measured steps (peak
stats reset after the model is built, so the first step's optimizer states count) and the
median step time (the device synchronised before each clock read); an out-of-memory error
is caught and recorded. The prediction is ``estimate_memory`` (allocated_bytes,
reserved_bytes, total_bytes) and ``predict_for_optimizer`` on the matching hardware profile
for the same configuration.

Attention: ``scaled_dot_product_attention`` forward + backward (bf16, causal, 32 heads of
128) at 512 ... 16k tokens for each SDPA backend (flash, mem-efficient, math; math only up
to 4k), against the cost model's attention term for that kernel.

    python -m benchmarks.gpu_check              # on a CUDA machine; writes results/gpu_check.json
    python -m benchmarks.gpu_check --dry-run    # tiny shapes on the CPU (no file unless --out)

Without a CUDA device (and without ``--dry-run``) it says so and exits 0, measuring nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "gpu_check.json"

#: The GPU shape: TinyLlama-1.1B's (hidden 2048, 22 layers, GQA 32/4, SwiGLU 5632).
GPU_SHAPE = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
}
GPU_BATCH = (4, 1024)  # micro-batch, sequence
DRY_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
}
DRY_BATCH = (2, 32)
LORA_TARGETS = ("q", "k", "v", "o")
HF_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]

#: Device names -> hardware profiles (the first match wins).
PROFILE_BY_NAME = [
    ("H100 PCIe", "h100-pcie-80gb"),
    ("H100", "h100-sxm-80gb"),
    ("H200", "h200"),
    ("H800", "h800"),
    ("H20", "h20"),
    ("GB200", "gb200"),
    ("GB300", "gb300"),
    ("B200", "b200"),
    ("B300", "b300"),
    ("A100-SXM4-40GB", "a100-sxm-40gb"),
    ("A100-PCIE", "a100-pcie-80gb"),
    ("A100", "a100-sxm-80gb"),
    ("A10G", "a10g"),
    ("L40S", "l40s"),
    ("L4", "l4"),
    ("RTX 4090", "rtx-4090"),
    ("RTX 3090", "rtx-3090"),
    ("RTX A6000", "rtx-a6000"),
    ("T4", "t4"),
    ("V100", "v100-32gb"),
]


@dataclass(frozen=True)
class Case:
    """One fine-tuning case: the task, the optimizer id and how torch builds it."""

    name: str
    task: str  # lora, qlora, finetune
    optimizer: str  # taxonomy id
    needs_cuda: bool = False


CASES = [
    Case("lora-adamw", "lora", "adamw"),
    Case("qlora-adamw", "qlora", "adamw", needs_cuda=True),
    Case("full-adamw", "finetune", "adamw"),
    Case("full-adamw-8bit", "finetune", "adamw-8bit"),
    Case("full-paged-adamw-8bit", "finetune", "paged-adamw-8bit", needs_cuda=True),
]


def profile_for(device_name: str) -> str | None:
    """The hardware profile id of a CUDA device name, or None."""
    return next((pid for key, pid in PROFILE_BY_NAME if key in device_name), None)


def _versions() -> dict[str, str | None]:
    import torch

    out: dict[str, str | None] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    for name in ("transformers", "peft", "bitsandbytes"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # a missing or broken package is a fact to record
            out[name] = None
    try:
        out["optadvise_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=False,
        ).stdout.strip()
    except OSError:
        out["optadvise_commit"] = None
    return out


def _device_facts(device: str) -> dict[str, Any]:
    import torch

    if device != "cuda":
        return {"kind": "cpu", "name": platform.processor() or platform.machine()}
    props = torch.cuda.get_device_properties(0)
    driver = None
    with contextlib.suppress(Exception):
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
    return {
        "kind": "cuda",
        "name": props.name,
        "memory_bytes": props.total_memory,
        "sms": props.multi_processor_count,
        "compute_capability": f"{props.major}.{props.minor}",
        "driver": driver,
        "profile": profile_for(props.name),
    }


def _spec_for(shape: dict[str, int], seq: int) -> Any:
    """The optadvise model spec of the shape, read through its own config.json reader."""
    from advisor.model.hf_config import load_hf_config

    cfg = {
        "model_type": "llama",
        "_name_or_path": "gpu-check-llama",
        "max_position_embeddings": max(seq, 2048),
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        **shape,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(cfg))
        return load_hf_config(path)


def _config_for(case: Case, b: int, s: int) -> Any:
    from advisor.config import Attention, OptimizerImpl, Precision, Stack, Task, TrainingConfig

    return TrainingConfig(
        task=Task(case.task),
        optimizer=case.optimizer,
        precision=Precision.BF16,  # the weights are bf16, no fp32 master copy
        micro_batch=b,
        seq_len=s,
        attention=Attention.FLASH,
        stack=Stack.HF,
        optimizer_impl=OptimizerImpl.FOREACH,
        lora_targets=LORA_TARGETS,
    )


def predict(case: Case, shape: dict[str, int], b: int, s: int, device: dict[str, Any]) -> Any:
    """optadvise's memory (allocated, reserved, total) and step time for one case."""
    from advisor.cost.step import predict_for_optimizer
    from advisor.hardware.profiles import get_hardware_profile
    from advisor.memory import DeviceOverheads, estimate_memory, gpu_overheads
    from advisor.rules.taxonomy import load_taxonomy

    spec = _spec_for(shape, s)
    config = _config_for(case, b, s)
    tech = load_taxonomy().get(case.optimizer)
    cuda = device["kind"] == "cuda"
    overheads = gpu_overheads(device.get("profile")) if cuda else DeviceOverheads.cpu()
    m = estimate_memory(spec, config, optimizer=tech, device=overheads)
    step = None
    if cuda and device.get("profile"):
        hw = get_hardware_profile(device["profile"])
        step = predict_for_optimizer(spec, config, tech, calibration=None, hardware=hw).seconds
    return {
        "allocated_bytes": m.allocated_bytes,
        "reserved_bytes": m.reserved_bytes,
        "total_bytes": m.total_bytes,
        "cuda_context_bytes": m.breakdown["cuda_context"],
        "paged_bytes": m.paged_bytes,
        "step_s": step,
    }


def _build_model(case: Case, shape: dict[str, int], device: str) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**shape, max_position_embeddings=4096, tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    if case.task == "qlora":
        _quantize_4bit(model)
    if case.task in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        # NOTE: PEFT would upcast bf16 adapters to fp32 (autocast_adapter_dtype) and cast each
        # adapter's input to fp32 with them; the plan estimated is all-bf16.
        lora = LoraConfig(r=16, target_modules=HF_LORA_TARGETS)
        model = get_peft_model(model, lora, autocast_adapter_dtype=False)
    return model


def _quantize_4bit(model: Any) -> None:
    """The decoder's linear layers as bitsandbytes NF4 (double quantisation, bf16 compute)."""
    import bitsandbytes as bnb
    import torch

    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, lin in list(parent.named_children()):
                if not isinstance(lin, torch.nn.Linear):
                    continue
                q = bnb.nn.Linear4bit(
                    lin.in_features,
                    lin.out_features,
                    bias=False,
                    compute_dtype=torch.bfloat16,
                    compress_statistics=True,
                    quant_type="nf4",
                )
                q.weight = bnb.nn.Params4bit(
                    lin.weight.data.cpu(),
                    requires_grad=False,
                    compress_statistics=True,
                    quant_type="nf4",
                )
                setattr(parent, name, q.to("cuda"))  # quantised on the move to the device


def _optimizer(case: Case, params: list[Any]) -> Any:
    import torch

    if case.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=1e-5, foreach=True)
    import bitsandbytes as bnb

    if case.optimizer == "adamw-8bit":
        return bnb.optim.AdamW8bit(params, lr=1e-5)
    return bnb.optim.PagedAdamW8bit(params, lr=1e-5)


def measure_case(case: Case, shape: dict[str, int], b: int, s: int, device: str, steps: int):  # type: ignore[no-untyped-def]
    """Measured peaks and step times of one case (None where the device has no counter)."""
    import torch

    cuda = device == "cuda"
    model = opt = None
    try:
        model = _build_model(case, shape, device)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = _optimizer(case, params)
        ids = torch.randint(0, shape["vocab_size"], (b, s), device=device)
        if cuda:
            torch.cuda.synchronize()
            # What building the model cached (QLoRA's bf16 weights before quantisation) is
            # not the step's: hand it back before the peaks start.
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(steps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            del loss
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return {
            "oom": False,
            "max_memory_allocated": torch.cuda.max_memory_allocated() if cuda else None,
            "max_memory_reserved": torch.cuda.max_memory_reserved() if cuda else None,
            # The first step builds the optimizer states: the median is over the rest.
            "step_s": statistics.median(times[1:] if len(times) > 1 else times),
            "steps": len(times),
        }
    except torch.cuda.OutOfMemoryError as exc:
        return {"oom": True, "error": str(exc).splitlines()[0]}
    finally:
        del model, opt
        if cuda:
            torch.cuda.empty_cache()


def _error(pred: float | None, meas: float | None) -> float | None:
    if not pred or not meas:
        return None
    return round(100 * (pred / meas - 1), 2)


def run_finetune(dry: bool, device: dict[str, Any], deadline: float) -> list[dict[str, Any]]:
    """Every case measured (or skipped with a reason) beside its prediction."""
    shape, (b, s) = (DRY_SHAPE, DRY_BATCH) if dry else (GPU_SHAPE, GPU_BATCH)
    cuda = device["kind"] == "cuda"
    rows = []
    for case in CASES:
        row: dict[str, Any] = {"case": case.name, "task": case.task, "optimizer": case.optimizer}
        row["shape"] = {**shape, "micro_batch": b, "seq_len": s}
        row["predicted"] = predict(case, shape, b, s, device)
        if case.needs_cuda and not cuda:
            row["skipped"] = "needs a CUDA device (bitsandbytes 4-bit / paged memory)"
        elif time.monotonic() > deadline:
            row["skipped"] = "time budget spent"
        else:
            try:
                row["measured"] = measure_case(case, shape, b, s, device["kind"], 2 if dry else 5)
            except (ImportError, RuntimeError) as exc:  # bitsandbytes without CUDA kernels ...
                row["skipped"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        meas = row.get("measured") or {}
        pred = row["predicted"]
        row["error_pct"] = {
            "allocated": _error(pred["allocated_bytes"], meas.get("max_memory_allocated")),
            "reserved": _error(pred["reserved_bytes"], meas.get("max_memory_reserved")),
            "step": _error(pred["step_s"], meas.get("step_s")),
        }
        rows.append(row)
        print(json.dumps({k: row.get(k) for k in ("case", "error_pct", "skipped")}), flush=True)
    return rows


_BACKENDS = {"flash": "FLASH_ATTENTION", "mem-efficient": "EFFICIENT_ATTENTION", "eager": "MATH"}


def predict_attention(seq: int, heads: int, head_dim: int, kernel: str, device: dict[str, Any]):  # type: ignore[no-untyped-def]
    """The cost model's fwd+bwd seconds of one causal attention core (b=1) on the profile."""
    if device["kind"] != "cuda" or not device.get("profile"):
        return None
    from advisor.config import Attention
    from advisor.cost.step import predict_for_optimizer
    from advisor.hardware.profiles import get_hardware_profile
    from advisor.rules.taxonomy import load_taxonomy

    shape = {**GPU_SHAPE, "num_attention_heads": heads, "hidden_size": heads * head_dim}
    shape["num_key_value_heads"] = heads
    spec = _spec_for(shape, seq)
    config = _config_for(CASES[0], 1, seq).with_(attention=Attention(kernel))
    step = predict_for_optimizer(
        spec,
        config,
        load_taxonomy().get("adamw"),
        calibration=None,
        hardware=get_hardware_profile(device["profile"]),
    )
    part = step.components.get("attention")
    return part.seconds / (spec.num_layers or 1) if part is not None else None


def run_attention(dry: bool, device: dict[str, Any], deadline: float) -> list[dict[str, Any]]:
    """SDPA fwd+bwd per backend and sequence length, beside the cost model's figure."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    dev = device["kind"]
    heads, hd = (4, 16) if dry else (32, 128)
    seqs = [64, 128] if dry else [512, 1024, 2048, 4096, 8192, 16384]
    dtype = torch.float32 if dry else torch.bfloat16
    rows = []
    for kernel, backend in _BACKENDS.items():
        for seq in seqs:
            row: dict[str, Any] = {"kernel": kernel, "seq_len": seq, "heads": heads}
            row["head_dim"] = hd
            if kernel == "eager" and seq > 4096:
                row["skipped"] = "math backend: S^2 scores, only up to 4k"
            elif time.monotonic() > deadline:
                row["skipped"] = "time budget spent"
            else:
                row.update(
                    _time_sdpa(
                        sdpa, sdpa_kernel, getattr(SDPBackend, backend), seq, heads, hd, dev, dtype
                    )
                )
            row["predicted_s"] = predict_attention(seq, heads, hd, kernel, device)
            row["error_pct"] = _error(row["predicted_s"], row.get("measured_s"))
            rows.append(row)
    return rows


def _time_sdpa(sdpa, sdpa_kernel, backend, seq, heads, hd, dev, dtype):  # type: ignore[no-untyped-def]
    import torch

    try:
        q, k, v = (
            torch.randn(1, heads, seq, hd, device=dev, dtype=dtype, requires_grad=True)
            for _ in range(3)
        )
        times = []
        with sdpa_kernel(backend):
            for _ in range(5):
                if dev == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = sdpa(q, k, v, is_causal=True)
                out.backward(torch.ones_like(out))
                if dev == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        return {"measured_s": statistics.median(times[2:])}
    except torch.cuda.OutOfMemoryError as exc:
        return {"oom": True, "error": str(exc).splitlines()[0]}
    except RuntimeError as exc:  # "No available kernel" for a backend this device lacks
        return {"skipped": f"RuntimeError: {str(exc).splitlines()[0][:200]}"}
    finally:
        if dev == "cuda":
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    """Measure (or say that there is no GPU); write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--out", type=Path, default=None, help=f"default: {RESULTS}")
    parser.add_argument("--budget-s", type=float, default=270.0, help="stop starting cases after")
    args = parser.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print(
            "gpu_check: no CUDA GPU here: nothing measured, nothing written (--dry-run runs "
            "the tiny shapes on the CPU)"
        )
        return 0
    start = time.monotonic()
    deadline = start + args.budget_s
    device = _device_facts("cpu" if args.dry_run else "cuda")
    out = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "dry_run": args.dry_run,
        "device": device,
        "versions": _versions(),
        "method": __doc__.split("\n\n")[1] if __doc__ else "",
        "finetune": run_finetune(args.dry_run, device, deadline),
        "attention": run_attention(args.dry_run, device, deadline),
    }
    out["seconds"] = round(time.monotonic() - start, 1)
    path = args.out or (None if args.dry_run else RESULTS)
    if path is not None:
        path.write_text(json.dumps(out, indent=1) + "\n")
        print(f"gpu_check: wrote {path} ({out['seconds']} s)")
    else:
        print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
