"""Scenario tests of `optadvise recommend`: each verdict with the reason it must hold.

Profiles make the costs analytic (datasheet peaks), so these run anywhere, fast.
"""

from __future__ import annotations

import pytest

from advisor.app.recommend import RecommendRequest, run_recommend
from advisor.errors import UserError
from advisor.model import get_model_profile, resolve_model_size
from advisor.plan import RecommendReport
from advisor.units import GIB

DP_OPTIMIZERS = {"dp-sgd", "dp-adam", "dp-zo"}


def rec(size: str = "7B", model: str | None = None, **flags: object) -> RecommendReport:
    spec = get_model_profile(model) if model else resolve_model_size(size)
    # The CLI's defaults (RecommendRequest.from_flags), analytic costs unless asked.
    defaults: dict[str, object] = {"calibrate": False, **flags}
    return run_recommend(RecommendRequest.from_flags(spec=spec, **defaults))  # type: ignore[arg-type]


def full_adamw_no_savers(r: RecommendReport) -> bool:
    return any(
        x.optimizer == "adamw"
        and x.task == "finetune"
        and x.sharding == "none"
        and x.checkpointing == "none"
        and x.offload == "none"
        and x.precision == "bf16-mixed"
        for x in r.recommendations
    )


def test_7b_full_finetune_on_a_24gb_card_rejects_plain_adamw_and_offers_what_fits() -> None:
    # 7B x 16 bytes of model states = 100 GiB before activations > 24 GiB.
    r = rec(hardware="rtx-4090")
    assert r.recommendations, "something must fit: adapters, 8-bit states, zeroth-order"
    assert not full_adamw_no_savers(r)
    why = {w.option: w.verdict for w in r.why_not}
    plain = next(v for k, v in why.items() if k.startswith("AdamW"))
    assert "needs" in plain and "per device" in plain
    assert all(x.peak_memory_bytes <= 0.9 * 24 * GIB for x in r.recommendations)


def test_125m_on_a_big_gpu_fine_tunes_all_weights() -> None:
    # 125M x 16 B = 2 GiB of model states: full fine-tuning fits an 80 GB card, so the
    # balanced pick trains every weight (adapters would give up quality for little).
    r = rec("125M", hardware="h100-sxm-80gb", top=5)
    assert r.recommendations[0].task == "finetune"
    plain = next((w for w in r.why_not if w.option.startswith("AdamW")), None)
    assert plain is None or plain.verdict.startswith("fits")


def test_70b_pretrain_on_8_h100_needs_sharding_or_offload() -> None:
    # 70B x 16 B = 1.1 TB of model states: only sharding over 8 x 80 GB (or offload) fits.
    r = rec("70B", task="pretrain", hardware="h100-sxm-80gb", gpus=8, top=10)
    assert r.recommendations
    for x in r.recommendations:
        assert x.sharding in ("zero3", "fsdp", "zero2", "zero1") or x.offload != "none"
    assert r.workload.world_size == 8 and r.hardware.gpus_per_node == 8


def test_405b_on_8_nodes_of_h100_plans_multi_node_with_communication_cost() -> None:
    r = rec(
        "405B",
        model="llama-3.1-405b",
        task="pretrain",
        hardware="h100-sxm-80gb",
        gpus=8,
        nodes=8,
        top=3,
    )
    assert r.recommendations and r.workload.world_size == 64
    best = r.recommendations[0]
    assert best.sharding in ("zero3", "fsdp")
    assert best.cost_components.get("communication", 0) > 0


def test_1t_on_one_node_needs_nvme_and_without_it_says_what_would() -> None:
    # ZeRO-Infinity (Rajbhandari et al. 2021) trains 1T parameters on one DGX-2 node by
    # keeping the 16 B/param of model states on NVMe: a DGX H100's 30 TB holds them, its
    # 2 TiB of RAM does not. Without NVMe nothing fits, and the report says what would.
    r = rec("1T", task="pretrain", hardware="h100-sxm-80gb", gpus=8)
    assert r.recommendations and all("nvme-offload" in x.techniques for x in r.recommendations)
    bare = rec("1T", task="pretrain", hardware="h100-sxm-80gb", gpus=8, nvme="0")
    assert not bare.recommendations
    changes = " ".join(s.change for s in bare.suggestions)
    assert "devices with ZeRO-3" in changes


def test_70b_qlora_on_a_24gb_card_fits_nothing_and_suggests() -> None:
    # A 4-bit 70B base alone is ~35 GiB > 24 GB.
    r = rec("70B", task="qlora", hardware="rtx-4090")
    assert not r.recommendations and r.suggestions


def test_privacy_leaves_only_private_optimizers() -> None:
    # DP-SGD (Abadi et al. 2016): only per-sample-clipped, noised updates are private.
    r = rec("125M", hardware="a100-sxm-80gb", privacy="dp", top=10)
    assert r.recommendations
    assert {x.optimizer for x in r.recommendations} <= DP_OPTIMIZERS


def test_lora_task_only_recommends_adapters() -> None:
    r = rec("7B", task="lora", hardware="a10g", top=10)
    assert r.recommendations and all("lora" in x.techniques for x in r.recommendations)


def test_objective_memory_puts_the_smallest_footprint_first() -> None:
    r = rec("7B", hardware="a100-sxm-80gb", objective="memory", top=10)
    # Rule weights (0.02 log-units per point under "memory") may order footprints a few
    # percent apart; never more.
    peaks = [x.peak_memory_bytes for x in r.recommendations]
    assert peaks[0] <= min(peaks) * 1.03
    assert r.recommendations[0].micro_batch == 1  # the least memory, not the most throughput


def test_objective_speed_puts_the_fastest_first() -> None:
    r = rec("1.3B", hardware="a100-sxm-80gb", objective="speed", top=10)
    times = [x.step_time_s for x in r.recommendations]
    # Rule weights may break near-ties (2% of log time per point), never reverse a big gap.
    assert times[0] <= min(times) * 1.25


def test_objective_quality_prefers_full_parameter_training_when_it_fits() -> None:
    # LoRA trails full fine-tuning in quality on hard tasks; quality weighs the rules' advice.
    r = rec("1.3B", hardware="a100-sxm-80gb", objective="quality", top=3)
    assert r.recommendations[0].task == "finetune"


def test_fp8_only_where_the_tensor_cores_have_it() -> None:
    # FP8 needs compute capability >= 8.9 (Ada, Hopper).
    h100 = rec("7B", hardware="h100-sxm-80gb", top=300)
    a100 = rec("7B", hardware="a100-sxm-80gb", top=300)
    assert not any(x.precision == "fp8-mixed" for x in a100.recommendations)
    a100_fp8 = [rj.reason for rj in a100.rejected if "fp8-mixed" in rj.techniques]
    h100_fp8 = [rj.reason for rj in h100.rejected if "fp8-mixed" in rj.techniques]
    assert a100_fp8 and all("compute capability" in r for r in a100_fp8 if "FP8" in r or "fp8" in r)
    assert any("compute capability >= 8.9" in r for r in a100_fp8)
    assert not any("compute capability" in r for r in h100_fp8)


def test_t4_has_no_bf16_so_16_bit_means_fp16_with_loss_scaling() -> None:
    # bf16 needs Ampere (cc 8.0); a T4 is 7.5.
    r = rec("1.3B", hardware="t4", top=20)
    assert r.recommendations
    assert not any("bf16" in x.precision for x in r.recommendations)


def test_qlora_is_not_offered_on_amd() -> None:
    # bitsandbytes NF4 kernels are CUDA-only in the taxonomy.
    r = rec("70B", hardware="mi300x", top=50)
    assert not any("qlora" in x.techniques for x in r.recommendations)


def test_cpu_laptop_without_fast_bf16_trains_in_fp32() -> None:
    # bf16 GEMM ~58x slower than fp32 with oneDNN held to AVX2 (no avx512_bf16/AMX):
    # benchmarks/results/cpu_efficiency.json. The top rows are
    # distinct plans now; a 16-bit plan may appear far below, as the one that saves memory
    # at ~100x the time, never among the first.
    r = rec("125M", hardware="cpu-laptop", top=5)
    assert r.recommendations
    assert all(x.precision == "fp32" for x in r.recommendations)
    assert all(x.offload == "none" for x in r.recommendations)


def test_7b_full_finetune_on_the_cpu_laptop_does_not_fit_in_fp32() -> None:
    # 7B in fp32 is 27 GB of weights alone, more than the laptop's 16 GB.
    r = rec("7B", hardware="cpu-laptop")
    assert not full_adamw_no_savers(r)
    assert r.recommendations or r.suggestions


def test_memory_budget_overrides_the_device() -> None:
    big = rec("7B", hardware="h100-sxm-80gb", top=200)
    small = rec("7B", hardware="h100-sxm-80gb", memory_budget="24GB", top=200)
    assert small.hardware.device_memory_bytes == 24 * 10**9
    assert max(x.peak_memory_bytes for x in small.recommendations) <= 0.9 * 24 * 10**9
    assert len(small.rejected) > len(big.rejected)


def test_slow_inter_node_links_bring_gradient_compression_advice() -> None:
    # Below 25 GB/s, PowerSGD / QSGD with error feedback cut all-reduce time (Vogels 2019).
    r = rec("1.3B", task="pretrain", hardware="a10g", gpus=4, nodes=4)
    fired = {f.rule for f in r.fired_rules}
    assert r.facts["interconnect_gb_s"] < 25
    assert any("compress" in f or "powersgd" in f or "error-feedback" in f for f in fired), fired


def test_large_global_batch_fires_linear_scaling_and_lamb() -> None:
    # Goyal et al. 2017; You et al. 2019 (LAMB) for batches in the tens of thousands.
    r = rec(
        "1.3B",
        task="pretrain",
        hardware="h100-sxm-80gb",
        gpus=8,
        nodes=8,
        micro_batch=4,
        global_batch=32768,
    )
    effects = " ".join(f.effect for f in r.fired_rules)
    assert "lamb" in effects and ("linear-lr-scaling" in effects or "lr-warmup" in effects)


def test_sparse_features_prefer_adagrad() -> None:
    r = rec("125M", hardware="a100-sxm-80gb", sparse_features=True, top=10)
    assert any("adagrad" in f.effect for f in r.fired_rules)


def test_the_same_inputs_give_the_same_report() -> None:
    a = rec("7B", hardware="l40s", top=10)
    b = rec("7B", hardware="l40s", top=10)
    assert a.model_dump_json() == b.model_dump_json()


def test_pretraining_never_picks_zeroth_order() -> None:
    # MeZO relies on a pre-trained model's prompt-conditioned regime (Malladi et al. 2023).
    r = rec("125M", task="pretrain", hardware="l4", top=20)
    assert not any(x.order == "zeroth" for x in r.recommendations)


def test_json_contract_fields() -> None:
    r = rec("7B", hardware="rtx-4090").model_dump(mode="json")
    for key in ("recommendations", "rejected", "hardware", "workload"):
        assert key in r
    first = r["recommendations"][0]
    for key in (
        "rank",
        "optimizer",
        "order",
        "precision",
        "attention",
        "techniques",
        "sharding",
        "peak_memory_bytes",
        "fits",
        "step_time_s",
        "tokens_per_s",
        "cost_source",
        "reasons",
    ):
        assert key in first
    assert isinstance(first["peak_memory_bytes"], int)
    assert first["cost_source"] == "analytic"
    assert all({"configuration", "reason"} <= set(x) for x in r["rejected"])


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (dict(task="train"), "invalid --task"),
        (dict(objective="fast"), "invalid --objective"),
        (dict(memory_budget="24XB"), "--memory-budget"),
        (dict(hardware="h900"), "unknown hardware profile"),
        (dict(hardware="cpu-laptop", gpus=4), "CPU profile"),
        (dict(hardware="l4", calibrate=True), "--calibrate"),
        (dict(hardware="l4", micro_batch=4, global_batch=2), "--global-batch"),
    ],
)
def test_bad_flags_are_user_errors(flags: dict[str, object], words: str) -> None:
    with pytest.raises(UserError) as info:
        rec("125M", **flags)
    assert words in info.value.message + info.value.hint


def test_local_gpus_from_a_faked_probe() -> None:
    # A probed node of two H100s (faked NVML answers) plans data parallelism over both; a GPU
    # no profile names borrows the closest datasheet of its architecture, and says so.
    from advisor.hardware import probe
    from advisor.hardware.profiles import load_hardware_profiles
    from advisor.plan import target_from_probe
    from tests.conftest import FakeGpu, FakeNVML

    report = probe.probe_hardware(with_torch=False, nvml=FakeNVML(gpus=[FakeGpu(), FakeGpu()]))
    profiles = load_hardware_profiles()
    target = target_from_probe(report, profiles, gpus=None, nodes=1, memory_budget=None)
    assert target.profile.id == "h100-sxm-80gb" and target.gpus_per_node == 2
    assert target.interconnect_gb_s == 900 and target.compute_capability == 9.0
    odd = probe.probe_hardware(
        with_torch=False,
        nvml=FakeNVML(gpus=[FakeGpu(name="NVIDIA GeForce RTX 4070", total=12 * 2**30, cc=(8, 9))]),
    )
    t = target_from_probe(odd, profiles, gpus=None, nodes=1, memory_budget=None)
    assert t.profile.compute_capability == "8.9" and "analytic costs from the" in t.name


@pytest.mark.parametrize(
    ("nvml_name", "gib", "profile"),
    [
        ("NVIDIA H100 80GB HBM3", 80, "h100-sxm-80gb"),
        ("NVIDIA H100 PCIe", 80, "h100-pcie-80gb"),
        ("NVIDIA A100-SXM4-40GB", 40, "a100-sxm-40gb"),
        ("NVIDIA A100 80GB PCIe", 80, "a100-pcie-80gb"),
        ("NVIDIA GeForce RTX 4090", 24, "rtx-4090"),
        ("NVIDIA L4", 24, "l4"),
        ("NVIDIA L40S", 48, "l40s"),
        ("Tesla T4", 16, "t4"),
        ("Tesla V100-SXM2-32GB", 32, "v100-32gb"),
    ],
)
def test_nvml_names_map_to_their_datasheets(nvml_name: str, gib: int, profile: str) -> None:
    from advisor.hardware.profiles import load_hardware_profiles
    from advisor.plan import match_gpu_profile

    found = match_gpu_profile(nvml_name, gib * GIB, load_hardware_profiles().values())
    assert found is not None and found.id == profile


# --- plan search: batch geometry, layouts, memory savers, host, distinct rows ---------------


def _memory_prices(**update: object) -> bool:
    """Whether the memory model already prices a TrainingConfig field (the lead's model)."""
    from advisor.config import Task, TrainingConfig
    from advisor.memory import estimate_memory
    from advisor.rules.taxonomy import load_taxonomy

    spec = resolve_model_size("7B")
    # The same data-parallel degree on both sides, so only the field under test differs.
    c = TrainingConfig(task=Task.PRETRAIN, gpus=int(update.get("gpus", 8)), micro_batch=1)  # type: ignore[call-overload]
    opt = load_taxonomy().get("adamw")
    plain = estimate_memory(spec, c, optimizer=opt).total_bytes
    return estimate_memory(spec, c.with_(**update), optimizer=opt).total_bytes != plain


# NOTE: these verdicts need the memory/cost models to price the new TrainingConfig fields
# (lead: memory.estimate_memory; gpucost: cost.predict_step_time). Until they do, the tests
# are expected failures (strict: they turn into failures the moment they pass unexpectedly,
# so the marker cannot outlive its reason).
needs_in_backward_memory = pytest.mark.xfail(
    not _memory_prices(optimizer_in_backward=True),
    reason="memory model does not yet free gradients under optimizer_in_backward (lead)",
    strict=True,
)
needs_tp_pp_models = pytest.mark.xfail(
    True,
    reason="models priced (2026-11-30, held-out Llama 3 Table 4 at 5%): at the CLI's "
    "defaults (seq 2048, 4M-token batch, hf stack, balanced) the search picks TP2 + ZeRO-3 "
    "over 64 with full recomputation, activation offload and micro-batches of 16 (255 "
    "tok/s/GPU, fp8: the gathers hide under 16 x 2048-token micro-batches) over Llama 3's "
    "TP8 + PP16 (223): FSDP under pipelining keeps parameters gathered (torch.distributed."
    "pipelining), and offloading un-recomputed activations costs their PCIe traffic. Llama 3 "
    "chose TP8 + PP16 for 16k GPUs at seq 8192",
    strict=True,
)


def _geometry_holds(r: RecommendReport) -> None:
    for x in r.recommendations:
        assert x.micro_batch * x.grad_accumulation * x.data_parallel == x.global_batch
        assert x.data_parallel * x.tensor_parallel * x.pipeline_parallel == r.workload.world_size
        if x.global_batch != r.workload.global_batch:
            assert x.global_batch_note, "a plan off the global batch must say why"


def test_gpt2_small_pretraining_on_an_a100_runs_a_real_micro_batch() -> None:
    # nanoGPT trains GPT-2 small at 12 x 1024 tokens per micro-batch on a 40 GB A100
    # (Karpathy, nanoGPT train_gpt2 config); on 80 GB the search must find at least that,
    # not micro-batch 1 with 95% of the card idle. Default global batch: 0.5M tokens
    # (GPT-3 Table 2.1 below 1B) = 512 sequences of 1024.
    r = rec(model="gpt2", task="pretrain", hardware="a100-sxm-80gb")
    best = r.recommendations[0]
    assert r.workload.global_batch == 512 and "GPT-3" in r.workload.global_batch_source
    assert best.micro_batch >= 12
    assert best.peak_memory_bytes > 0.3 * r.hardware.device_memory_bytes
    _geometry_holds(r)


def test_fixed_micro_batch_is_kept_and_accumulation_reaches_the_global_batch() -> None:
    # --micro-batch pins the micro-batch; the accumulation makes up the global batch.
    r = rec(model="gpt2", task="pretrain", hardware="a100-sxm-80gb", micro_batch=4, global_batch=64)
    assert all(x.micro_batch == 4 and x.grad_accumulation == 16 for x in r.recommendations)
    _geometry_holds(r)


def test_global_batch_tokens_sets_the_samples() -> None:
    # 4M tokens (Llama 2's batch) at 4096 tokens per sample = 1024 sequences.
    r = rec("7B", task="pretrain", hardware="h100-sxm-80gb", gpus=8, seq_len="4096",
            global_batch_tokens="4M", top=3)  # fmt: skip
    assert r.workload.global_batch == 1024 and r.workload.global_batch_tokens == 4 * 2**20
    _geometry_holds(r)


def test_the_report_names_the_host_it_assumed_and_flags_override_it() -> None:
    # A --hardware profile plans on its documented host (DGX H100: 2 TiB, 30 TB NVMe), not on
    # the RAM of the machine running the tool; --host-memory replaces it.
    r = rec("7B", hardware="h100-sxm-80gb", gpus=8, top=1)
    assert "DGX H100" in r.hardware.host_source
    assert r.hardware.host_memory_bytes == 2048 * GIB // 8
    small = rec("7B", hardware="h100-sxm-80gb", gpus=8, host_memory="64GiB", top=1)
    assert small.hardware.host_source.startswith("--host-memory")
    assert small.hardware.host_memory_bytes == 8 * GIB


def test_zero_offload_13b_on_one_v100_with_a_large_host() -> None:
    # ZeRO-Offload (Ren et al. 2021, sec. 6.2): 13B trained on one V100-32GB by keeping the
    # fp32 optimizer states (and the step) in a DGX-2's 1.5 TB of host memory. 13B x 16 B
    # = 194 GiB of model states cannot fit 32 GB any other way in full-parameter training.
    r = rec("13B", task="pretrain", hardware="v100-32gb", host_memory="1.5TiB", top=10)
    offloaded = [x for x in r.recommendations if x.offload != "none"]
    assert offloaded, [x.techniques for x in r.recommendations]
    first = r.recommendations[0]
    assert first.offload in ("optimizer", "optimizer+params") and first.global_batch == 1024
    assert all(x.host_memory_bytes <= 0.8 * 1.5 * 1024 * GIB for x in offloaded)
    _geometry_holds(r)
    # With a small host the same plans are rejected for host memory, not silently kept.
    tight = rec("13B", task="pretrain", hardware="v100-32gb", host_memory="32GiB", top=10)
    assert not any(x.offload != "none" and "nvme" not in x.offload for x in tight.recommendations)
    assert any(rj.kind == "host-memory" for rj in tight.rejected)


@needs_in_backward_memory
def test_7b_pretraining_on_one_4090_needs_per_layer_updates_or_offload() -> None:
    # 7B x (2 B weights + 4 B fp32 master) alone is 39 GiB > 24 GB: full-parameter
    # pre-training fits one RTX 4090 only with the master weights and states off the device
    # (ZeRO-Offload/Infinity, Ren et al. 2021; Rajbhandari et al. 2021: 13.5 GB of bf16
    # weights, one gradient bucket, activations) or without them and without the gradient
    # buffer (bare bf16 with per-layer updates, Lv et al. 2023; Zhao et al. 2024). The search
    # must find those itself; those that reach the 2M-token global batch (accumulation)
    # come first. fp32 master weights cannot stay on the card, so bare bf16 weights are
    # allowed but penalised, with advice (bare-bf16-pretraining-only-when-master-weights-
    # do-not-fit).
    r = rec("7B", task="pretrain", hardware="rtx-4090", top=10)
    assert r.recommendations
    assert all(
        "fused-backward-step" in x.memory_savers or "cpu-offload-optimizer" in x.memory_savers
        for x in r.recommendations
    )
    assert r.facts["mixed_precision_fits_on_device"] is False
    assert "bare-bf16-pretraining-only-when-master-weights-do-not-fit" in {
        f.rule for f in r.fired_rules
    }
    assert "no-bare-16-bit-weights-for-pretraining" not in {f.rule for f in r.fired_rules}
    _geometry_holds(r)


@needs_in_backward_memory
def test_galore_8bit_with_per_layer_updates_is_reached_on_a_4090() -> None:
    # GaLore's headline run (Zhao et al. 2024, Fig. 1 and sec. 5.4: 8-bit GaLore with
    # per-layer weight updates and bf16 weights pre-trains LLaMA 7B in 22.0 GB). The search
    # reaches it by itself: within the card, no offload. Per-layer updates cannot accumulate,
    # so at the default 2M-token batch it ranks after the plans that reach the batch.
    r = rec("7B", task="pretrain", hardware="rtx-4090", top=20)
    hits = [
        x
        for x in r.recommendations
        if x.optimizer == "galore-adamw-8bit" and "fused-backward-step" in x.memory_savers
    ]
    assert hits, [(x.optimizer, x.precision, x.memory_savers) for x in r.recommendations]
    assert hits[0].precision == "bf16" and hits[0].offload == "none"
    assert hits[0].peak_memory_bytes < 0.9 * 24 * GIB


def test_bare_bf16_pretraining_stays_excluded_where_master_weights_fit() -> None:
    # 1.3B on an 80 GB card: fp32 master weights fit, so bf16-only weights are excluded
    # (Micikevicius et al. 2018): no plan drops them.
    r = rec("1.3B", task="pretrain", hardware="a100-sxm-80gb", top=10)
    assert r.facts["mixed_precision_fits_on_device"] is True
    assert "no-bare-16-bit-weights-for-pretraining" in {f.rule for f in r.fired_rules}
    assert all(x.precision not in ("bf16", "fp16") for x in r.recommendations)


def test_llama_405b_on_16_nodes_of_8_h100_uses_tp_in_node_at_llama3s_throughput() -> None:
    # Llama 3 405B was trained with TP 8 inside each node and PP 16 across nodes (Dubey et al.
    # 2024, Table 4) at 380-430 TFLOP/s per GPU (~165 tok/s/GPU at seq 8192); the issue's
    # pick was FSDP with full recomputation at 26 tok/s/GPU. The pick keeps tensor
    # parallelism inside a node (Narayanan et al. 2021, takeaway 1) and reaches Llama 3's
    # per-GPU throughput. Which of pipelining or sharding across nodes wins at the CLI's
    # defaults is the fitted models' call (see the strict xfail below).
    r = rec(model="llama-3.1-405b", task="pretrain", hardware="h100-sxm-80gb", gpus=8,
            nodes=16, top=3)  # fmt: skip
    best = r.recommendations[0]
    assert 1 < best.tensor_parallel <= 8, best.layout
    assert best.tokens_per_s / 128 >= 150, best.tokens_per_s
    _geometry_holds(r)


@needs_tp_pp_models
def test_llama_405b_on_16_nodes_of_8_h100_uses_tp8_in_node_and_pipeline_across() -> None:
    # Llama 3's exact choice: TP 8 in the node, pipeline across (Dubey et al. 2024, Table 4).
    r = rec(model="llama-3.1-405b", task="pretrain", hardware="h100-sxm-80gb", gpus=8,
            nodes=16, top=3)  # fmt: skip
    best = r.recommendations[0]
    assert best.tensor_parallel == 8 and best.pipeline_parallel > 1, best.layout


def test_pinned_tp8_pp16_builds_llama3s_layout() -> None:
    # --tp 8 --pp 16 on 16 x 8 H100 is Llama 3 405B's layout (Dubey et al. 2024, Table 4):
    # one data-parallel replica, 126 layers over 16 stages (uneven last stages), and it fits.
    r = rec(model="llama-3.1-405b", task="pretrain", hardware="h100-sxm-80gb", gpus=8,
            nodes=16, tp=8, pp=16, top=1)  # fmt: skip
    best = r.recommendations[0]
    assert (best.tensor_parallel, best.pipeline_parallel, best.data_parallel) == (8, 16, 1)
    assert best.peak_memory_bytes <= 0.9 * 80 * GIB
    _geometry_holds(r)


def test_layouts_are_validated_where_they_are_built() -> None:
    # A layout's degrees multiply to the world size, and TP stays inside a node.
    from pydantic import ValidationError

    from advisor.config import ParallelLayout
    from advisor.model import get_model_profile
    from advisor.plan.layout import Layout, enumerate_layouts

    with pytest.raises(ValidationError):
        Layout(
            world_size=16,
            gpus_per_node=8,
            parallel=ParallelLayout(data_parallel=2, tensor_parallel=4, pipeline_parallel=1),
        )
    with pytest.raises(ValidationError):
        Layout(
            world_size=16,
            gpus_per_node=8,
            parallel=ParallelLayout(data_parallel=1, tensor_parallel=16, pipeline_parallel=1),
        )
    layouts = enumerate_layouts(
        get_model_profile("llama-3.1-405b"), world_size=128, gpus_per_node=8
    )
    # Dubey et al. 2024 Table 4's TP8 PP16 (on 16 nodes, one DP replica) is in the space.
    assert any(
        lay.parallel.tensor_parallel == 8
        and lay.parallel.pipeline_parallel == 16
        and lay.parallel.data_parallel == 1
        for lay in layouts
    )
    assert all(
        lay.parallel.tensor_parallel <= 8
        and lay.parallel.data_parallel
        * lay.parallel.tensor_parallel
        * lay.parallel.pipeline_parallel
        == 128
        for lay in layouts
    )


def test_7b_fine_tuning_on_8_a100_under_quality_trains_every_weight_sharded() -> None:
    # 7B full fine-tuning needs ~16 B/param = 104 GiB of model states: too much for one
    # 80 GB card, ~13 GiB per device under ZeRO-3/FSDP over 8. Under --objective quality,
    # full-parameter training beats adapters whenever it fits in some layout (LoRA learns
    # less, Biderman et al. 2024), and the rule that prefers LoRA must not fire.
    r = rec("7B", hardware="a100-sxm-80gb", gpus=8, objective="quality", top=3)
    best = r.recommendations[0]
    assert best.task == "finetune"
    assert best.sharding in ("zero3", "fsdp", "zero2", "zero1", "hsdp") or best.tensor_parallel > 1
    assert r.facts["full_training_fits"] is True
    assert "lora-when-full-fine-tuning-does-not-fit" not in {f.rule for f in r.fired_rules}


def test_top_rows_are_distinct_and_equivalents_fold_into_also() -> None:
    # LoRA on 7B trains ~20M parameters: optimizers differ by megabytes and milliseconds,
    # so they must share one row ("also: ..."), not fill the top 5 with one plan.
    r = rec("7B", task="lora", hardware="a100-sxm-80gb", top=5)
    rows = r.recommendations
    labels = [
        (x.task, x.optimizer, x.precision, x.layout, tuple(x.memory_savers), x.micro_batch)
        for x in rows
    ]
    assert len(set(labels)) == len(labels)
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            same_time = abs(a.tokens_per_s - b.tokens_per_s) <= 0.005 * a.tokens_per_s
            same_memory = abs(a.peak_memory_bytes - b.peak_memory_bytes) <= 0.005 * max(
                a.peak_memory_bytes, b.peak_memory_bytes
            )
            assert not (same_time and same_memory), (a.optimizer, b.optimizer)
    assert len(rows[0].also) >= 3, rows[0].also


def test_fsdp_and_zero3_at_equal_cost_share_a_row() -> None:
    # FSDP is PyTorch's ZeRO-3 (Zhao et al. 2023): same memory and time in the models.
    r = rec("13B", task="pretrain", hardware="a100-sxm-80gb", gpus=8, top=10)
    for x in r.recommendations:
        if x.sharding == "fsdp":
            assert not any(
                y.sharding == "zero3"
                and y.config.with_(sharding=x.config.layout.sharding) == x.config
                for y in r.recommendations
            )


def test_cpu_case_plans_a_batch_and_no_offload() -> None:
    # On a CPU the device memory is the host: nothing to offload; fp32 without fast bf16.
    r = rec("125M", task="pretrain", hardware="cpu-laptop", top=5)
    assert r.recommendations and all(x.offload == "none" for x in r.recommendations)
    assert r.hardware.host_memory_bytes == 0
    _geometry_holds(r)


def test_privacy_case_keeps_private_optimizers_and_a_full_batch() -> None:
    # DP-SGD's noise scale is set per step for the global batch (Abadi et al. 2016): the
    # plan must reach it exactly; no per-layer updates (they rule out per-sample clipping).
    r = rec("125M", hardware="a100-sxm-80gb", privacy="dp", top=5)
    assert {x.optimizer for x in r.recommendations} <= DP_OPTIMIZERS
    assert not any("fused-backward-step" in x.techniques for x in r.recommendations)
    _geometry_holds(r)


def test_json_carries_the_plan_fields() -> None:
    r = rec("7B", hardware="h100-sxm-80gb", gpus=8, top=2).model_dump(mode="json")
    for key in (
        "micro_batch", "grad_accumulation", "data_parallel", "tensor_parallel",
        "pipeline_parallel", "stack", "memory_savers", "layout", "global_batch", "also",
    ):  # fmt: skip
        assert key in r["recommendations"][0]
    assert r["search"]["plans_considered"] > r["search"]["plans_evaluated"] > 0
    assert r["search"]["plans_pruned"] == (
        r["search"]["plans_considered"] - r["search"]["plans_evaluated"]
    )


def test_micro_batch_is_found_by_binary_search() -> None:
    # Memory is monotone in the micro-batch: O(log n) fit checks, not n.
    from advisor.plan.geometry import fitting_prefix

    calls: list[int] = []

    class Ev:
        def fits(self, c: int) -> bool:
            calls.append(c)
            return c <= 37

    choices = list(range(1, 1025))
    fit = fitting_prefix(Ev(), choices, lambda mb: mb)  # type: ignore[arg-type,return-value]
    assert fit[-1] == 37 and len(calls) <= 12  # both ends, then log2(1024)


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (dict(hardware="h100-sxm-80gb", gpus=8, global_batch=4), "--global-batch"),
        (dict(hardware="h100-sxm-80gb", gpus=8, host_memory="-1TB"), "--host-memory"),
        (dict(hardware="h100-sxm-80gb", gpus=8, tp=16), "--tp"),
        (
            dict(hardware="h100-sxm-80gb", gpus=8, global_batch=64, global_batch_tokens="1M"),
            "--global-batch-tokens",
        ),
        (dict(hardware="h100-sxm-80gb", gpus=8, global_batch=12, micro_batch=5), "--global-batch"),
    ],
)
def test_bad_plan_flags_are_user_errors(flags: dict[str, object], words: str) -> None:
    with pytest.raises(UserError) as info:
        rec("7B", **flags)
    assert words in info.value.message + info.value.hint


def test_a_global_batch_no_fitting_plan_divides_is_a_user_error() -> None:
    # 70B on 8 GPUs fits only sharded over all 8 (one replica per device); 12 samples cannot
    # be split over 8 replicas, so no plan reaches the requested batch exactly.
    with pytest.raises(UserError) as info:
        rec("70B", task="pretrain", hardware="h100-sxm-80gb", gpus=8, global_batch=12, tp=1, pp=1)
    assert "cannot be split evenly" in info.value.message


@pytest.mark.parametrize(
    "flags",
    [
        ["--host-memory", "-1TB"],
        ["--gpus", "8", "--tp", "16"],
        ["--gpus", "8", "--global-batch", "4"],
    ],
)
def test_bad_plan_flags_print_one_line_and_exit_2(flags: list[str]) -> None:
    from typer.testing import CliRunner

    from advisor.shell.cli import app

    args = ["recommend", "--model-size", "7B", "--hardware", "h100-sxm-80gb", "--no-calibrate"]
    result = CliRunner().invoke(app, args + flags, env={"NO_COLOR": "1", "COLUMNS": "100"})
    assert result.exit_code == 2
    assert result.output.count("Error:") == 1 and "Traceback" not in result.output
