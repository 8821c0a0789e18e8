"""Golden outputs: what representative command lines print and write, kept byte for byte.

A reorganisation must not change what a user sees. This records, for each command line in
CASES, the exit status, standard output, standard error and every file ``--emit`` writes,
into ``tests/golden/<name>.json``; ``tests/test_golden.py`` runs the same lines and compares.

Only deterministic command lines are here: plans for hardware profiles (``--hardware``) with
``--no-calibrate``, ``estimate``, the catalogues, and ``calibrate show`` over a fixed cache
(``tests/golden/cache``, one real calibration of this project's CPU, kept as a fixture).
What the local probe and timings decide is covered by the measured tests and benchmarks.

    python -m benchmarks.golden            # record (after a deliberate output change)
    python -m benchmarks.golden --check    # compare, as the test does
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
CACHE_FIXTURE = GOLDEN / "cache"
TMP_MARK = "<TMP>"
ROOT_MARK = "<ROOT>"

R = ["recommend", "--no-calibrate", "--json"]
E = ["estimate", "--json"]
EC = ["estimate", "--json", "--hardware", "cpu-laptop"]
EG = ["estimate", "--json", "--hardware", "a100-sxm-80gb"]
TINY = "tests/fixtures/configs"
HF = "tests/fixtures/hfconfigs"

# name -> argv (after `optadvise`). 1 to 16,384 GPUs, every task, every objective, every engine.
CASES: dict[str, list[str]] = {
    # catalogues
    "taxonomy": ["taxonomy", "--json"],
    "profiles": ["profiles", "list", "--json"],
    "rules-list": ["rules", "list", "--json"],
    "rules-check": ["rules", "check", "--json"],
    "calibrate-show": ["calibrate", "show", "--json"],
    "calibrate-show-text": ["calibrate", "show"],
    # recommend: tasks, sizes, hardware
    "rec-7b-4090-lora": [*R, "--model-size", "7B", "--hardware", "rtx-4090", "--task", "lora"],
    "rec-8b-4090-finetune": [*R, "--model", "llama-3.1-8b", "--hardware", "rtx-4090"],
    "rec-8b-t4-qlora": [*R, "--model", "llama-3.1-8b", "--hardware", "t4", "--task", "qlora"],
    "rec-7b-v100-qlora": [
        *R,
        "--model",
        "mistral-7b",
        "--hardware",
        "v100-32gb",
        "--task",
        "qlora",
    ],
    "rec-125m-laptop-pretrain": [
        *R,
        "--model-size",
        "125M",
        "--hardware",
        "cpu-laptop",
        "--task",
        "pretrain",
    ],
    "rec-gpt2-8xa100": [
        *R,
        "--model",
        "gpt2",
        "--hardware",
        "a100-sxm-80gb",
        "--gpus",
        "8",
        "--task",
        "pretrain",
    ],
    "rec-resnet50-a10g": [*R, "--model", "resnet-50", "--hardware", "a10g", "--task", "pretrain"],
    "rec-bert-l4": [*R, "--model", "bert-large", "--hardware", "l4"],
    "rec-1b-3090": [*R, "--model", "llama-3.2-1b", "--hardware", "rtx-3090"],
    "rec-13b-a6000-lora": [
        *R,
        "--model",
        "llama-2-13b",
        "--hardware",
        "rtx-a6000",
        "--task",
        "lora",
    ],
    "rec-70b-h100x8-lora": [
        *R,
        "--model",
        "llama-3.1-70b",
        "--hardware",
        "h100-sxm-80gb",
        "--gpus",
        "8",
        "--task",
        "lora",
    ],
    "rec-70b-64h100-pretrain": [
        *R,
        "--model",
        "llama-3.1-70b",
        "--hardware",
        "h100-sxm-80gb",
        "--gpus",
        "8",
        "--nodes",
        "8",
        "--task",
        "pretrain",
    ],
    "rec-405b-16384h100": [
        *R,
        "--model",
        "llama-3.1-405b",
        "--hardware",
        "h100-sxm-80gb",
        "--gpus",
        "8",
        "--nodes",
        "2048",
        "--task",
        "pretrain",
        "--global-batch-tokens",
        "16M",
        "--seq-len",
        "8k",
    ],
    "rec-405b-1024h100": [
        *R,
        "--model",
        "llama-3.1-405b",
        "--hardware",
        "h100-sxm-80gb",
        "--gpus",
        "8",
        "--nodes",
        "128",
        "--task",
        "pretrain",
        "--stack",
        "fused",
    ],
    "rec-1t-b200": [
        *R,
        "--model-size",
        "1T",
        "--hardware",
        "b200",
        "--gpus",
        "8",
        "--nodes",
        "64",
        "--task",
        "pretrain",
    ],
    "rec-dsv3-h800": [
        *R,
        "--model",
        "deepseek-v3",
        "--hardware",
        "h800",
        "--gpus",
        "8",
        "--nodes",
        "32",
        "--task",
        "pretrain",
    ],
    "rec-mixtral-h200": [
        *R,
        "--model",
        "mixtral-8x7b",
        "--hardware",
        "h200",
        "--gpus",
        "8",
        "--task",
        "finetune",
    ],
    "rec-qwen3moe-gb200": [
        *R,
        "--model",
        "qwen3-30b-a3b",
        "--hardware",
        "gb200",
        "--gpus",
        "4",
        "--nodes",
        "2",
        "--task",
        "pretrain",
    ],
    "rec-32b-mi300x": [*R, "--model", "qwen3-32b", "--hardware", "mi300x", "--gpus", "8"],
    "rec-14b-h20-lora": [*R, "--model", "qwen3-14b", "--hardware", "h20", "--task", "lora"],
    "rec-gemma-l40s": [*R, "--model", "gemma-3-12b", "--hardware", "l40s", "--task", "qlora"],
    "rec-phi4-a100-40": [
        *R,
        "--model",
        "phi-4",
        "--hardware",
        "a100-sxm-40gb",
        "--gpus",
        "4",
        "--task",
        "finetune",
    ],
    "rec-opt-a100pcie": [*R, "--model", "opt-1.3b", "--hardware", "a100-pcie-80gb"],
    "rec-3b-b300-pretrain": [
        *R,
        "--model",
        "llama-3.2-3b",
        "--hardware",
        "b300",
        "--gpus",
        "8",
        "--task",
        "pretrain",
    ],
    "rec-8b-gb300-mi355x": [*R, "--model", "qwen3-8b", "--hardware", "mi355x", "--gpus", "8"],
    # objectives
    "obj-speed": [*R, "--model-size", "7B", "--hardware", "a100-sxm-80gb", "--objective", "speed"],
    "obj-memory": [
        *R,
        "--model-size",
        "7B",
        "--hardware",
        "a100-sxm-80gb",
        "--objective",
        "memory",
    ],
    "obj-quality": [
        *R,
        "--model-size",
        "7B",
        "--hardware",
        "a100-sxm-80gb",
        "--objective",
        "quality",
    ],
    "obj-ttt": [
        *R,
        "--model-size",
        "1.3B",
        "--hardware",
        "h100-sxm-80gb",
        "--objective",
        "time-to-target",
        "--task",
        "pretrain",
    ],
    # constraints and options
    "opt-privacy": [*R, "--model-size", "125M", "--hardware", "a10g", "--privacy", "dp"],
    "opt-sparse": [*R, "--model-size", "125M", "--hardware", "t4", "--sparse-features"],
    "opt-pins": [
        *R,
        "--model-size",
        "13B",
        "--hardware",
        "h100-sxm-80gb",
        "--gpus",
        "8",
        "--tp",
        "2",
        "--pp",
        "2",
        "--task",
        "pretrain",
    ],
    "opt-batch": [
        *R,
        "--model-size",
        "1.3B",
        "--hardware",
        "a100-sxm-80gb",
        "--gpus",
        "8",
        "--micro-batch",
        "4",
        "--global-batch-tokens",
        "4M",
        "--task",
        "pretrain",
    ],
    "opt-offload": [
        *R,
        "--model-size",
        "70B",
        "--hardware",
        "rtx-4090",
        "--host-memory",
        "1TiB",
        "--nvme",
        "4TB",
    ],
    "opt-budget": [
        *R,
        "--model-size",
        "7B",
        "--hardware",
        "h100-sxm-80gb",
        "--memory-budget",
        "24GB",
    ],
    "opt-lora-targets": [
        *R,
        "--model-size",
        "7B",
        "--hardware",
        "rtx-4090",
        "--task",
        "lora",
        "--lora-targets",
        "all-linear",
    ],
    "opt-rope": [
        *R,
        "--model",
        "llama-2-7b",
        "--hardware",
        "h100-sxm-80gb",
        "--seq-len",
        "16k",
        "--rope-scaling",
        "4",
        "--task",
        "lora",
    ],
    "opt-show-rejected": [
        *R,
        "--model-size",
        "7B",
        "--hardware",
        "rtx-4090",
        "--show-rejected",
        "--top",
        "3",
    ],
    "cfg-tiny-llama": [*R, "--model-config", f"{TINY}/tiny-llama.json", "--hardware", "t4"],
    "cfg-tiny-mixtral": [*R, "--model-config", f"{TINY}/tiny-mixtral.json", "--hardware", "l4"],
    "cfg-tiny-bert": [*R, "--model-config", f"{TINY}/tiny-bert.json", "--hardware", "t4"],
    "nothing-fits": [*R, "--model-size", "70B", "--hardware", "t4", "--task", "finetune"],
    "bad-input": [*R, "--model-size", "7B", "--hardware", "h100-sxm"],
    # text reports
    "text-rec-explain": [
        "recommend",
        "--no-calibrate",
        "--model-size",
        "7B",
        "--hardware",
        "rtx-4090",
        "--task",
        "qlora",
        "--explain",
    ],
    "text-rec-cluster": [
        "recommend",
        "--no-calibrate",
        "--model",
        "llama-3.1-70b",
        "--hardware",
        "h100-sxm-80gb",
        "--gpus",
        "8",
        "--nodes",
        "4",
        "--task",
        "pretrain",
    ],
    "text-estimate": [
        "estimate",
        "--model-size",
        "7B",
        "--optimizer",
        "adamw",
        "--precision",
        "amp-bf16",
        "--hardware",
        "a100-sxm-80gb",
    ],
    # estimate: every optimizer family, precision, saver and layout
    "est-adamw-bf16": [
        *EG,
        "--model-size",
        "7B",
        "--optimizer",
        "adamw",
        "--precision",
        "amp-bf16",
    ],
    "est-sgd-fp32": [*EC, "--model-size", "125M", "--optimizer", "sgd", "--precision", "fp32"],
    "est-adafactor-fp16": [
        *EG,
        "--model-size",
        "1.3B",
        "--optimizer",
        "adafactor",
        "--precision",
        "amp-fp16",
    ],
    "est-8bit": [
        *E,
        "--model-size",
        "7B",
        "--optimizer",
        "paged-adamw-8bit",
        "--precision",
        "amp-bf16",
        "--hardware",
        "rtx-4090",
    ],
    "est-galore": [
        *E,
        "--model-size",
        "7B",
        "--optimizer",
        "galore-adamw-8bit",
        "--task",
        "pretrain",
        "--hardware",
        "rtx-4090",
    ],
    "est-mezo": [*EG, "--model-size", "13B", "--optimizer", "mezo", "--precision", "amp-bf16"],
    "est-shampoo": [*EG, "--model-size", "1.3B", "--optimizer", "shampoo"],
    "est-muon": [*EG, "--model-size", "1.3B", "--optimizer", "muon", "--task", "pretrain"],
    "est-lora": [
        *EG,
        "--model",
        "llama-3.1-8b",
        "--task",
        "lora",
        "--lora-rank",
        "64",
        "--lora-targets",
        "all-linear",
        "--lora-dropout",
        "0.05",
    ],
    "est-qlora-cuda": [
        *E,
        "--model",
        "llama-3.1-8b",
        "--task",
        "qlora",
        "--device",
        "cuda",
        "--hardware",
        "t4",
        "--optimizer",
        "paged-adamw-8bit",
    ],
    "est-zero3-offload": [
        *E,
        "--model-size",
        "70B",
        "--gpus",
        "8",
        "--sharding",
        "zero3",
        "--offload",
        "optimizer+params",
        "--checkpointing",
        "full",
        "--hardware",
        "a100-sxm-80gb",
    ],
    "est-fsdp-selective": [
        *EG,
        "--model-size",
        "13B",
        "--gpus",
        "16",
        "--sharding",
        "fsdp",
        "--checkpointing",
        "selective",
        "--attention",
        "flash",
        "--micro-batch",
        "2",
        "--seq-len",
        "4k",
    ],
    "est-tp-pp": [
        *EG,
        "--model",
        "llama-3.1-70b",
        "--gpus",
        "4",
        "--tensor-parallel",
        "8",
        "--pipeline-parallel",
        "4",
        "--virtual-stages",
        "2",
        "--sharding",
        "zero1",
        "--task",
        "pretrain",
        "--grad-accumulation",
        "16",
        "--stack",
        "fused",
    ],
    "est-moe-ep": [
        *E,
        "--model",
        "mixtral-8x7b",
        "--gpus",
        "8",
        "--expert-parallel",
        "8",
        "--sharding",
        "zero1",
        "--hardware",
        "h100-sxm-80gb",
    ],
    "est-dpsgd": [*EC, "--model-size", "125M", "--dp-sgd", "--optimizer", "dp-adam"],
    "est-bert-dropout": [*EG, "--model", "bert-large", "--dropout", "--attention", "eager"],
    "est-fused-backward": [
        *EG,
        "--model-size",
        "1.3B",
        "--optimizer-in-backward",
        "--activation-offload",
        "--fused-loss",
        "--fused-norm",
    ],
    "est-hfcfg-gptoss": [
        *EG,
        "--model-config",
        f"{HF}/released/gpt-oss-20b.json",
        "--task",
        "lora",
    ],
    "est-resnet-lars": [*EG, "--model", "resnet-50", "--optimizer", "lars", "--micro-batch", "64"],
    "est-lamb-amp16": [
        *E,
        "--model-size",
        "1.3B",
        "--optimizer",
        "lamb",
        "--precision",
        "amp-fp16",
        "--hardware",
        "v100-32gb",
        "--device",
        "cuda",
        "--micro-batch",
        "8",
    ],
}

# --emit: every engine, each with a plan on a few GPUs
EMIT_CASES: dict[str, list[str]] = {
    f"emit-{engine}": [
        "recommend",
        "--no-calibrate",
        "--model-size",
        size,
        "--hardware",
        hw,
        "--gpus",
        gpus,
        "--task",
        task,
        "--emit",
        engine,
        "--out",
        f"{TMP_MARK}/out",
        *(["--force"] if engine in ("torchtitan", "megatron") else []),
    ]
    for engine, size, hw, gpus, task in (
        ("deepspeed", "7B", "a100-sxm-80gb", "8", "finetune"),
        ("accelerate", "7B", "rtx-4090", "2", "lora"),
        ("torch", "1.3B", "a10g", "1", "finetune"),
        ("torchtitan", "13B", "h100-sxm-80gb", "8", "pretrain"),
        ("megatron", "70B", "h100-sxm-80gb", "8", "pretrain"),
    )
}
EMIT_CASES["emit-deepspeed-qlora"] = [
    "recommend",
    "--no-calibrate",
    "--model-size",
    "7B",
    "--hardware",
    "t4",
    "--task",
    "qlora",
    "--emit",
    "deepspeed",
    "--out",
    f"{TMP_MARK}/out",
]
EMIT_CASES["emit-megatron-moe"] = [
    "recommend",
    "--no-calibrate",
    "--model",
    "mixtral-8x7b",
    "--hardware",
    "h100-sxm-80gb",
    "--gpus",
    "8",
    "--nodes",
    "2",
    "--task",
    "pretrain",
    "--emit",
    "megatron",
    "--out",
    f"{TMP_MARK}/out",
    "--force",
]
EMIT_CASES["emit-megatron-refused"] = [
    "recommend",
    "--no-calibrate",
    "--model-size",
    "70B",
    "--hardware",
    "h100-sxm-80gb",
    "--gpus",
    "8",
    "--task",
    "pretrain",
    "--emit",
    "megatron",
    "--out",
    f"{TMP_MARK}/out",
]
EMIT_CASES["emit-torch-cluster"] = [
    "recommend",
    "--no-calibrate",
    "--model",
    "llama-3.1-8b",
    "--hardware",
    "h100-sxm-80gb",
    "--gpus",
    "8",
    "--nodes",
    "2",
    "--task",
    "pretrain",
    "--emit",
    "torch",
    "--out",
    f"{TMP_MARK}/out",
]

ALL = {**CASES, **EMIT_CASES}

# What may differ between two runs of one case: the time `rules check` took.
_VOLATILE = re.compile(r'("seconds": )[0-9.e-]+(\n}\n)$')


def run_case(name: str, argv: list[str]) -> dict[str, object]:
    """Run one command line in a scratch folder; return what it printed and wrote."""
    with tempfile.TemporaryDirectory(prefix="optadvise-golden-") as tmp:
        cache = Path(tmp) / "cache"
        shutil.copytree(CACHE_FIXTURE, cache)
        env = {
            **os.environ,
            "OPTADVISE_CACHE_DIR": str(cache),
            "COLUMNS": "100",
            "LINES": "50",
            "NO_COLOR": "1",
            "TERM": "dumb",
            "PYTHONHASHSEED": "0",
        }
        env.pop("FORCE_COLOR", None)
        args = [a.replace(TMP_MARK, tmp) for a in argv]
        proc = subprocess.run(
            [sys.executable, "-m", "advisor", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        files: dict[str, str] = {}
        out = Path(tmp) / "out"
        if out.is_dir():
            for path in sorted(out.rglob("*")):
                if path.is_file():
                    files[str(path.relative_to(out))] = path.read_text(encoding="utf-8")

        def clean(text: str) -> str:
            # NOTE: the temporary folder and the checkout's own path (rule files are
            # reported by path) differ from run to run and from machine to machine.
            return text.replace(tmp, TMP_MARK).replace(str(ROOT), ROOT_MARK)

        stdout = clean(proc.stdout)
        if name == "rules-check":
            stdout = _VOLATILE.sub(r"\1<volatile>\2", stdout)
        return {
            "argv": argv,
            "exit": proc.returncode,
            "stdout": stdout,
            "stderr": clean(proc.stderr),
            "files": {k: clean(v) for k, v in files.items()},
        }


def run_all(names: list[str], workers: int = 2) -> dict[str, dict[str, object]]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda n: run_case(n, ALL[n]), names))
    return dict(zip(names, results, strict=True))


def golden_path(name: str) -> Path:
    return GOLDEN / f"{name}.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of recording")
    parser.add_argument("names", nargs="*", help="cases (default: all)")
    parser.add_argument("--workers", type=int, default=2)
    ns = parser.parse_args()
    names = ns.names or list(ALL)
    unknown = [n for n in names if n not in ALL]
    if unknown:
        print(f"unknown case(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    results = run_all(names, ns.workers)
    differ = 0
    for name, result in results.items():
        path = golden_path(name)
        text = json.dumps(result, indent=1, sort_keys=True) + "\n"
        if ns.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                differ += 1
                print(f"DIFFERS {name}")
        else:
            path.write_text(text, encoding="utf-8")
            print(f"recorded {name}: exit {result['exit']}")
    if ns.check:
        print(f"{len(names) - differ}/{len(names)} identical")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
