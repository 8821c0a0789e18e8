"""All-reduce bandwidth between two local processes over torch.distributed (gloo or NCCL)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

_CHILD = r"""
import json, os, sys, time, warnings
warnings.filterwarnings("ignore")
import torch, torch.distributed as dist
rank = int(sys.argv[1]); backend = sys.argv[2]; device = sys.argv[3]
dist.init_process_group(backend, rank=rank, world_size=2)
if device.startswith("cuda"):
    torch.cuda.set_device(rank)
    device = f"cuda:{rank}"
x = torch.ones(16 * 1024 * 1024, device=device)  # 64 MiB
times = []
for i in range(6):
    if device.startswith("cuda"): torch.cuda.synchronize()
    t0 = time.perf_counter(); dist.all_reduce(x)
    if device.startswith("cuda"): torch.cuda.synchronize()
    times.append(time.perf_counter() - t0)
times = sorted(times[1:])
if rank == 0:
    print(json.dumps({"median_s": times[len(times) // 2], "bytes": x.numel() * 4}))
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure_allreduce(device: str) -> tuple[float | None, str | None]:
    """Bus bandwidth (GB/s) of a 64 MiB all-reduce between 2 local processes.

    Returns:
        (bandwidth, None), or (None, why it could not be measured).
    """
    backend = "nccl" if device.startswith("cuda") else "gloo"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(rank), backend, device],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        return None, "all-reduce measurement timed out"
    if any(p.returncode for p in procs):
        err = next((e for _, e in outs if e.strip()), "").strip().splitlines()
        return None, f"all-reduce over {backend} failed: {err[-1] if err else 'unknown error'}"
    data = json.loads(outs[0][0].strip().splitlines()[-1])
    # Ring all-reduce bus bandwidth: 2 (n-1)/n x bytes / time, n = 2.
    return round(data["bytes"] / data["median_s"] / 1e9, 3), None


_COLLECTIVES_CHILD = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import torch, torch.distributed as dist
rank, world, backend, device, numel = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                       sys.argv[4], int(sys.argv[5]))
dist.init_process_group(backend, rank=rank, world_size=world)
cuda = device.startswith("cuda")
if cuda:
    torch.cuda.set_device(rank)
    device = f"cuda:{rank}"
def sync():
    if cuda: torch.cuda.synchronize()
dtype = torch.bfloat16 if cuda else torch.float32
full = torch.ones(numel, device=device, dtype=dtype)
shard = torch.ones(numel // world, device=device, dtype=dtype)
def all_gather():
    if hasattr(dist, "all_gather_into_tensor") and cuda:
        dist.all_gather_into_tensor(full, shard)
    else:
        dist.all_gather(list(full.chunk(world)), shard)
def reduce_scatter():
    dist.reduce_scatter_tensor(shard, full)
def all_reduce():
    dist.all_reduce(full)
out = {}
for name, op in (("all_gather", all_gather), ("reduce_scatter", reduce_scatter),
                 ("all_reduce", all_reduce)):
    try:
        times = []
        for i in range(6):
            dist.barrier(); sync()
            t0 = time.perf_counter(); op(); sync()
            times.append(time.perf_counter() - t0)
        times = sorted(times[1:])
        out[name] = times[len(times) // 2]
    except Exception as exc:  # gloo has no reduce_scatter: recorded as missing
        out[name + "_error"] = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
if rank == 0:
    print(json.dumps({"seconds": out, "bytes": full.numel() * full.element_size()}))
dist.destroy_process_group()
"""


def bus_bandwidth(op: str, total_bytes: float, seconds: float, ranks: int) -> float:
    """NCCL bus bandwidth in GB/s (nccl-tests doc/PERFORMANCE.md): all-gather and
    reduce-scatter move (n-1)/n of the full buffer per rank, all-reduce twice that."""
    factor = (ranks - 1) / ranks * (2 if op == "all_reduce" else 1)
    return total_bytes * factor / seconds / 1e9


def measure_collectives(
    device: str, ranks: int, size_mib: int = 256, timeout_s: float = 180.0
) -> tuple[dict[str, float], str | None]:
    """Bus bandwidth (GB/s) of all-gather, reduce-scatter and all-reduce between ``ranks``
    local processes, one per GPU (NCCL) or CPU process (gloo), over torch.distributed.

    Returns:
        ({op: GB/s}, None), or ({}, why nothing was measured). With fewer than two GPUs
        there is nothing to measure: that is said, not raised.
    """
    if ranks < 2:
        return {}, "collectives need at least 2 GPUs: skipped"
    backend = "nccl" if device.startswith("cuda") else "gloo"
    numel = size_mib * 1024 * 1024 // (2 if backend == "nccl" else 4)
    numel -= numel % ranks
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _COLLECTIVES_CHILD,
                str(r),
                str(ranks),
                backend,
                device,
                str(numel),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(ranks)
    ]
    try:
        outs = [p.communicate(timeout=timeout_s) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        return {}, "collective measurement timed out"
    if any(p.returncode for p in procs):
        err = next((e for _, e in outs if e.strip()), "").strip().splitlines()
        return {}, f"collectives over {backend} failed: {err[-1] if err else 'unknown error'}"
    data = json.loads(outs[0][0].strip().splitlines()[-1])
    result = {
        op: round(bus_bandwidth(op, data["bytes"], s, ranks), 3)
        for op, s in data["seconds"].items()
        if not op.endswith("_error") and s > 0
    }
    missing = [op[: -len("_error")] for op in data["seconds"] if op.endswith("_error")]
    why = f"not available over {backend}: {', '.join(missing)}" if missing else None
    return result, why
