"""The shipped taxonomy: contract ids, categories, references, symmetry, and loader errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from advisor.config import Attention, Checkpointing, Offload, Precision, Sharding, Task
from advisor.errors import DataError, UserError
from advisor.rules.taxonomy import (
    Category,
    Order,
    StateKind,
    Taxonomy,
    config_technique_id,
    load_taxonomy,
)

# The members DESIGN.md ("The taxonomy") requires, by category, in file order.
EXPECTED: dict[Category, list[str]] = {
    Category.OPTIMIZER: [
        "mezo", "zo-adam", "dp-zo",
        "sgd", "sgd-momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw",
        "adafactor", "lion", "lamb", "lars", "adamw-8bit", "paged-adamw-8bit",
        "adam-8bit", "lion-8bit", "paged-lion-8bit", "sgd-momentum-8bit", "rmsprop-8bit",
        "adagrad-8bit", "lamb-8bit", "lars-8bit", "adam-mini",
        "galore-adamw", "galore-adamw-8bit", "muon", "dp-sgd", "dp-adam",
        "sophia", "adahessian", "hessian-free", "kfac", "shampoo", "soap", "psgd-kron",
    ],
    Category.ATTENTION: [
        "eager-attention", "mem-efficient-attention", "flash-attention",
        "flash-attention-2", "flash-attention-3", "cudnn-attention",
    ],
    Category.PRECISION: [
        "fp32", "tf32", "amp-fp16", "amp-bf16", "fp16-mixed", "bf16-mixed", "fp16", "bf16",
        "fp8-mixed", "mxfp8-mixed", "nvfp4-mixed", "dynamic-loss-scaling",
        "fp32-master-weights",
    ],
    Category.MEMORY: [
        "activation-checkpointing-full", "activation-checkpointing-selective",
        "activation-checkpointing-selective-layer", "activation-checkpointing-selective-op",
        "gradient-accumulation", "cpu-offload-optimizer", "cpu-offload-params",
        "nvme-offload", "lora", "qlora", "optimizer-states-8bit", "paged-optimizer",
        "fused-backward-step",
        "fused-cross-entropy", "activation-offload",
    ],
    Category.PARALLELISM: [
        "ddp", "zero-1", "zero-2", "zero-3", "fsdp", "hybrid-shard", "expert-parallel",
        "tensor-parallel", "sequence-parallel", "context-parallel", "ulysses-context-parallel",
        "pipeline-parallel", "async-sgd", "gradient-quantization", "topk-sparsification",
        "error-feedback", "powersgd", "comm-overlap",
    ],
    Category.SCHEDULE: ["linear-lr-scaling", "lr-warmup", "layerwise-adaptive-rates"],
    Category.NORMALIZATION: ["batchnorm", "layernorm", "groupnorm", "rmsnorm"],
    Category.PRIVACY: ["per-sample-clipping", "ghost-clipping", "privacy-accounting"],
}  # fmt: skip

# The optimizer ids other modules rely on, with the order their sources give them.
CONTRACT_ORDERS = {
    "sgd": Order.FIRST, "sgd-momentum": Order.FIRST, "nesterov": Order.FIRST,
    "adagrad": Order.FIRST, "rmsprop": Order.FIRST, "adam": Order.FIRST,
    "adamw": Order.FIRST, "adafactor": Order.FIRST, "lion": Order.FIRST,
    "lamb": Order.FIRST, "lars": Order.FIRST, "adamw-8bit": Order.FIRST,
    "paged-adamw-8bit": Order.FIRST, "adam-mini": Order.FIRST, "galore-adamw": Order.FIRST,
    "muon": Order.FIRST, "dp-sgd": Order.FIRST, "dp-adam": Order.FIRST,
    # Liu et al. 2023 title it "a Scalable Stochastic Second-order Optimizer".
    "sophia": Order.SECOND, "hessian-free": Order.SECOND, "kfac": Order.SECOND,
    "shampoo": Order.SECOND, "soap": Order.SECOND, "adahessian": Order.SECOND,
    "mezo": Order.ZEROTH, "zo-adam": Order.ZEROTH, "dp-zo": Order.ZEROTH,
}  # fmt: skip


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return load_taxonomy()


def test_shipped_taxonomy_has_exactly_the_design_members(taxonomy: Taxonomy) -> None:
    for category, ids in EXPECTED.items():
        assert [t.id for t in taxonomy.by_category(category)] == ids, category
    assert len(taxonomy.ids()) == sum(len(v) for v in EXPECTED.values()) == 99


@pytest.mark.parametrize("tid", sorted(CONTRACT_ORDERS))
def test_contract_optimizer_present_with_its_order(taxonomy: Taxonomy, tid: str) -> None:
    tech = taxonomy.get(tid)
    assert tech.category is Category.OPTIMIZER
    assert tech.order is CONTRACT_ORDERS[tid]
    assert tech.memory is not None


def test_optimizers_filter_by_order(taxonomy: Taxonomy) -> None:
    zeroth = [t.id for t in taxonomy.optimizers(Order.ZEROTH)]
    assert zeroth == ["mezo", "zo-adam", "dp-zo"]
    assert len(taxonomy.optimizers()) == len(EXPECTED[Category.OPTIMIZER])
    assert {t.id for t in taxonomy.optimizers("second")} == {
        "sophia", "adahessian", "hessian-free", "kfac", "shampoo", "soap", "psgd-kron"
    }  # fmt: skip


def test_only_optimizers_have_order_and_state(taxonomy: Taxonomy) -> None:
    for tech in taxonomy.techniques:
        is_opt = tech.category is Category.OPTIMIZER
        assert (tech.order is not None) == is_opt, tech.id
        assert (tech.memory is not None) == is_opt, tech.id


def test_every_entry_has_a_dated_reference(taxonomy: Taxonomy) -> None:
    checked = 0
    for tech in taxonomy.techniques:
        assert tech.references, tech.id
        for ref in tech.references:
            assert 1900 < ref.year <= 2026, (tech.id, ref)
            assert ref.authors and ref.title
        checked += 1
    assert checked == 99


def test_design_references_are_cited(taxonomy: Taxonomy) -> None:
    cited = {
        (r.authors.split()[0].rstrip(","), r.year)
        for t in taxonomy.techniques
        for r in t.references
    }
    # A sample of DESIGN.md's reference list, one per family, by first author and year.
    for first_author, year in [
        ("Robbins", 1951), ("Polyak", 1964), ("Nesterov", 1983), ("Duchi", 2011),
        ("Tieleman", 2012), ("Kingma", 2015), ("Loshchilov", 2019), ("Shazeer", 2018),
        ("Ioffe", 2015), ("Ba", 2016), ("Wu", 2018), ("Goyal", 2017), ("You", 2017),
        ("You", 2019), ("Martens", 2010), ("Martens", 2015), ("Gupta", 2018), ("Vyas", 2024),
        ("Liu", 2023), ("Chen", 2023), ("Dettmers", 2022), ("Dettmers", 2023), ("Hu", 2021),
        ("Zhao", 2024), ("Zhang", 2024), ("Malladi", 2023), ("Dao", 2022), ("Dao", 2023),
        ("Rabe", 2021), ("Micikevicius", 2018), ("Chen", 2016), ("Korthikanti", 2022),
        ("Rajbhandari", 2020), ("Ren", 2021), ("Zhao", 2023), ("Dean", 2012),
        ("Recht", 2011), ("Alistarh", 2017), ("Seide", 2014), ("Karimireddy", 2019),
        ("Vogels", 2019), ("Abadi", 2016),
    ]:  # fmt: skip
        assert (first_author, year) in cited, (first_author, year)


def test_incompatibilities_are_symmetric(taxonomy: Taxonomy) -> None:
    pairs = {(t.id, o) for t in taxonomy.techniques for o in t.incompatible_with}
    assert pairs, "the shipped taxonomy declares incompatibilities"
    missing = sorted((b, a) for a, b in pairs if (b, a) not in pairs)
    assert missing == []


def test_known_hard_incompatibilities(taxonomy: Taxonomy) -> None:
    # Flash kernels have no double backward (measured on CPU: "derivative for
    # aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented").
    assert "sophia" in taxonomy.get("flash-attention").incompatible_with
    # FlashAttention-2 takes fp16/bf16 inputs only.
    assert "fp32" in taxonomy.get("flash-attention-2").incompatible_with
    assert "gradient-accumulation" in taxonomy.get("fused-backward-step").incompatible_with
    assert "dp-sgd" in taxonomy.get("batchnorm").incompatible_with


@pytest.mark.parametrize(
    "enum_value",
    [*Precision, *Attention, *Checkpointing, *Sharding, *Offload, *Task],
    ids=lambda e: f"{type(e).__name__}.{e.value}",
)
def test_every_config_value_maps_to_a_taxonomy_entry(
    taxonomy: Taxonomy, enum_value: object
) -> None:
    tid = config_technique_id(enum_value)  # type: ignore[arg-type]
    if tid is None:
        assert enum_value in (
            Checkpointing.NONE, Sharding.NONE, Offload.NONE, Task.PRETRAIN, Task.FINETUNE
        )  # fmt: skip
        return
    assert tid in taxonomy


def test_precision_ids_equal_config_values(taxonomy: Taxonomy) -> None:
    assert [t.id for t in taxonomy.by_category("precision")][:11] == [p.value for p in Precision]
    assert config_technique_id(Attention.EAGER) == "eager-attention"
    assert config_technique_id(Attention.FLASH) == "flash-attention"


def test_hardware_requirements_are_the_published_ones(taxonomy: Taxonomy) -> None:
    cc = {t.id: t.requires.min_compute_capability for t in taxonomy.techniques}
    assert cc["fp8-mixed"] == 8.9  # FP8 tensor cores: Ada (sm89) and Hopper
    # Block-scaled MMA (MXFP8, NVFP4): Blackwell, sm100 (torchtitan's MX converter asserts
    # has_cuda_capability(10, 0)).
    assert cc["mxfp8-mixed"] == cc["nvfp4-mixed"] == 10.0
    assert cc["flash-attention-2"] == 8.0  # Dao 2023: Ampere and newer
    assert cc["flash-attention-3"] == 9.0  # Shah et al. 2024: Hopper
    assert cc["tf32"] == 8.0  # TF32 tensor cores arrive with A100
    for tid in ("adamw-8bit", "paged-adamw-8bit", "optimizer-states-8bit", "qlora"):
        req = taxonomy.get(tid).requires
        assert [k.value for k in req.device_kinds] == ["cuda"], tid
        assert "bitsandbytes" in req.packages, tid
    assert set(taxonomy.get("flash-attention-2").requires.dtypes) == {"fp16", "bf16"}
    for tech in taxonomy.by_category(Category.PARALLELISM):
        assert tech.requires.min_gpus >= 2, tech.id


def test_optimizer_state_bytes_match_the_implementations(taxonomy: Taxonomy) -> None:
    # Bytes per parameter of optimizer.state after a real step (torch 2.13,
    # pytorch-optimizer 4.1.0; bitsandbytes from its source): see rules/taxonomy.yaml.
    expected = {
        "sgd": 0, "sgd-momentum": 4, "nesterov": 4, "adagrad": 4, "rmsprop": 4,
        "adam": 8, "adamw": 8, "lion": 4, "lamb": 8, "lars": 4, "adamw-8bit": 2,
        "sophia": 12, "adahessian": 12, "mezo": 0, "muon": 4,
    }  # fmt: skip
    for tid, nbytes in expected.items():
        mem = taxonomy.get(tid).memory
        assert mem is not None and mem.bytes_per_param == nbytes, tid
    eight_bit = taxonomy.get("adamw-8bit").memory
    assert eight_bit is not None and eight_bit.state is StateKind.QUANTIZED_BLOCKWISE
    assert (eight_bit.block_size, eight_bit.min_quantized_numel) == (256, 4096)
    galore = taxonomy.get("galore-adamw")
    assert galore.memory is not None and galore.memory.rank == 128
    assert galore.compute.preconditioner_interval == 200
    assert taxonomy.get("mezo").compute.forward_passes == 2
    assert taxonomy.get("mezo").compute.backward_passes == 0


def test_implementations_name_a_module_path(taxonomy: Taxonomy) -> None:
    impl = {t.id: t.implementation for t in taxonomy.techniques}
    assert impl["mezo"] == "advisor.calibration.zeroth_order.MeZO"
    assert impl["flash-attention"] == (
        "torch.nn.functional.scaled_dot_product_attention[FLASH_ATTENTION]"
    )
    for tid, path in impl.items():
        if path is not None:
            assert re.match(r"^[a-z_]+(\.\w+)+", path), tid


def test_get_unknown_id_suggests_close_ids(taxonomy: Taxonomy) -> None:
    with pytest.raises(UserError) as exc:
        taxonomy.get("adamw8bit")
    assert "adamw-8bit" in exc.value.hint


# --------------------------------------------------------------------- broken fixtures

_GOOD = """\
techniques:
  - id: adamw
    name: AdamW
    category: optimizer
    order: first
    summary: Adam with decoupled weight decay, the transformer default optimizer.
    memory: {state: elementwise, states: 2, bytes_per_param: 8}
    references:
      - {authors: Loshchilov & Hutter, year: 2019, title: Decoupled Weight Decay Regularization}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "taxonomy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(DataError) as exc:
        load_taxonomy(path)
    return exc.value.problems


def test_good_fixture_loads(tmp_path: Path) -> None:
    assert load_taxonomy(_write(tmp_path, _GOOD)).ids() == ["adamw"]


def test_two_problems_in_one_file_are_both_reported_with_file_line_id_field(
    tmp_path: Path,
) -> None:
    text = _GOOD + (
        "  - id: layernorm\n"  # line 10
        "    name: LayerNorm\n"
        "    category: normalization\n"
        "    order: first\n"  # an order on a non-optimizer
        "    summary: Normalises each example over its features, independent of batch.\n"
        "    references: [{authors: Ba et al., year: 2016, title: Layer Normalization}]\n"
        "  - id: lion\n"  # line 16
        "    name: Lion\n"
        "    category: optimizer\n"  # no order, and a bad year
        "    summary: Sign momentum found by program search; one buffer of state.\n"
        "    memory: {state: elementwise, bytes_per_param: 4}\n"
        "    references: [{authors: Chen et al., year: twenty, title: Symbolic Discovery}]\n"
    )
    problems = _problems(_write(tmp_path, text))
    path = tmp_path / "taxonomy.yaml"
    assert f"{path}:10: layernorm: order: " in "\n".join(problems)
    assert any(p.startswith(f"{path}:16: lion: order: ") for p in problems), problems
    assert any(p.startswith(f"{path}:21: lion: references.0.year: ") for p in problems), problems
    assert len(problems) == 3


def test_duplicate_and_dangling_ids_are_reported(tmp_path: Path) -> None:
    text = _GOOD.replace("references:", "incompatible_with: [no-such-thing]\n    references:")
    text += _GOOD.removeprefix("techniques:\n")  # the same entry again, line 11
    problems = _problems(_write(tmp_path, text))
    path = tmp_path / "taxonomy.yaml"
    assert any(p.startswith(f"{path}:11: adamw: id: duplicate id") for p in problems), problems
    dangling = [p for p in problems if "unknown technique 'no-such-thing'" in p]
    assert dangling and dangling[0].startswith(f"{path}:2: adamw: incompatible_with: ")


def test_optimizer_without_memory_and_other_with_memory(tmp_path: Path) -> None:
    text = _GOOD.replace("    memory: {state: elementwise, states: 2, bytes_per_param: 8}\n", "")
    text += (
        "  - id: lora\n"  # line 9
        "    name: LoRA\n"
        "    category: memory\n"
        "    summary: Low-rank adapters beside frozen weights; tiny optimizer state.\n"
        "    memory: {state: none, bytes_per_param: 0}\n"
        "    references: [{authors: Hu et al., year: 2021, title: LoRA}]\n"
    )
    problems = _problems(_write(tmp_path, text))
    path = tmp_path / "taxonomy.yaml"
    assert any(p.startswith(f"{path}:2: adamw: memory: ") for p in problems), problems
    # Nested mappings report their own line: the flow mapping of `memory` on line 13.
    assert any(p.startswith(f"{path}:13: lora: memory: ") for p in problems), problems


def test_fused_step_agrees_with_the_implementation(taxonomy: Taxonomy, tmp_path: Path) -> None:
    fused = {t.id for t in taxonomy.optimizers() if t.memory and t.memory.fused_step}
    assert {"adam", "adamw", "sgd-momentum", "adamw-8bit", "lion-8bit"} <= fused
    assert not fused & {"adagrad", "rmsprop", "lion", "adafactor", "muon", "galore-adamw-8bit"}
    claimed = _GOOD.replace("bytes_per_param: 8}", "bytes_per_param: 8, fused_step: true}")
    (problem,) = _problems(_write(tmp_path, claimed))
    assert "fused_step is true but the implementation (none) names no fused kernel" in problem
    unclaimed = _GOOD.replace(
        "    references:", "    implementation: torch.optim.AdamW(fused=True)\n    references:"
    )
    (problem,) = _problems(_write(tmp_path, unclaimed))
    assert "fused_step is false but the implementation torch.optim.AdamW(fused=True)" in problem


def test_unknown_field_and_bad_id_pattern(tmp_path: Path) -> None:
    text = _GOOD.replace("name: AdamW", "name: AdamW\n    colour: blue").replace(
        "id: adamw", "id: AdamW_1"
    )
    problems = _problems(_write(tmp_path, text))
    path = tmp_path / "taxonomy.yaml"
    assert any(p.startswith(f"{path}:2: AdamW_1: colour: ") for p in problems), problems
    assert any(p.startswith(f"{path}:2: AdamW_1: id: ") for p in problems), problems


def test_invalid_yaml_and_wrong_shape(tmp_path: Path) -> None:
    path = _write(tmp_path, "techniques: [\n  - {id: x\n")
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:") and ": yaml: invalid YAML" in problem
    path = _write(tmp_path, "- id: x\n")
    assert _problems(path) == [
        f"{path}:1: -: techniques: expected a mapping with a `techniques` list"
    ]
