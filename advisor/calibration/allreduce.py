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
