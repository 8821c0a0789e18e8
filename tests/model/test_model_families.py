"""Every supported decoder family against transformers' own models (meta device, no weights).

Each case builds a small configuration with transformers' config class, writes its
``config.json`` the way ``save_pretrained`` does, reads it back with our loader (as a file
and as a model folder) and compares the parameter count and every tensor of every block
with ``AutoModelForCausalLM.from_config`` instantiated on the meta device.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from advisor.config import Attention, Precision
from advisor.memory import layer_activation_bytes
from advisor.model import (
    Arch,
    BlockNorms,
    ModelSpec,
    QkNorm,
    load_hf_config,
    load_model_profiles,
)
from advisor.model.hf_config import HF_DEFAULTS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PROFILES = load_model_profiles()

_BASE = {
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 96,
    "vocab_size": 160,
    "max_position_embeddings": 256,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
_MLA = {
    "num_key_value_heads": 4,  # MLA expands keys and values to every head, as the configs say
    "q_lora_rank": 40,
    "kv_lora_rank": 24,
    "qk_nope_head_dim": 12,
    "qk_rope_head_dim": 8,
    "v_head_dim": 16,
}

# (case id, model_type, keys over _BASE): each family and the variants its loader branches on.
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("llama1", "llama", {"num_key_value_heads": None}),
    ("llama2-bias", "llama", {"attention_bias": True, "mlp_bias": True}),
    (
        "llama3-rope-scaling-head-dim",
        "llama",
        {
            "head_dim": 24,
            "tie_word_embeddings": True,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 128,
            },
        },
    ),
    ("mistral", "mistral", {"head_dim": 24, "sliding_window": 64}),
    ("mixtral", "mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    ("qwen2-tied", "qwen2", {"tie_word_embeddings": True}),
    ("qwen3", "qwen3", {"head_dim": 24}),
    ("qwen3-bias-tied", "qwen3", {"attention_bias": True, "tie_word_embeddings": True}),
    (
        "qwen3-moe",
        "qwen3_moe",
        {
            "head_dim": 24,
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [1],
        },
    ),
    (
        "qwen3-moe-sparse-step",
        "qwen3_moe",
        {
            "num_experts": 6,
            "num_experts_per_tok": 3,
            "moe_intermediate_size": 16,
            "decoder_sparse_step": 2,
            "mlp_only_layers": [],
        },
    ),
    ("gemma2", "gemma2", {"head_dim": 24, "query_pre_attn_scalar": 24}),
    (
        "gemma3-text",
        "gemma3_text",
        {"head_dim": 24, "sliding_window": 32, "query_pre_attn_scalar": 99},
    ),
    ("phi3", "phi3", {}),
    ("phi3-mha", "phi3", {"num_key_value_heads": None}),
    ("olmo2", "olmo2", {}),
    ("olmo2-bias", "olmo2", {"attention_bias": True}),
    (
        "deepseek-v3",
        "deepseek_v3",
        {
            **_MLA,
            "n_routed_experts": 8,
            "n_shared_experts": 1,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "first_k_dense_replace": 1,
            "n_group": 2,
            "topk_group": 1,
        },
    ),
    (
        "deepseek-v3-no-q-lora-2-shared",
        "deepseek_v3",
        {
            **_MLA,
            "q_lora_rank": None,
            "n_routed_experts": 4,
            "n_shared_experts": 2,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 16,
            "first_k_dense_replace": 2,
            "n_group": 1,
            "topk_group": 1,
            "attention_bias": True,
        },
    ),
]


def _config(model_type: str, keys: dict[str, Any]) -> Any:
    kwargs = {**_BASE, **keys}
    if kwargs.get("num_key_value_heads") is None:
        kwargs.pop("num_key_value_heads")
    return transformers.AutoConfig.for_model(model_type, **kwargs)


def _meta_model(cfg: Any) -> Any:
    # NOTE: the meta device allocates nothing, so even DeepSeek-V3's 671B builds in seconds.
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(cfg)


def _write(cfg: Any, folder: Path, name: str = "config.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    cfg.to_json_file(path)  # what save_pretrained writes
    return path


def _blocks_by_layer(model: Any) -> dict[int, Counter[tuple[str, tuple[int, ...]]]]:
    layers: dict[int, Counter[tuple[str, tuple[int, ...]]]] = {}
    for name, p in model.named_parameters():
        m = re.match(r"model\.layers\.(\d+)\.(.+)$", name)
        if m:
            layers.setdefault(int(m.group(1)), Counter())[(m.group(2), tuple(p.shape))] += 1
    return layers


@pytest.mark.parametrize(("case", "model_type", "keys"), CASES, ids=[c[0] for c in CASES])
def test_family_counts_and_tensors_equal_transformers(
    case: str, model_type: str, keys: dict[str, Any], tmp_path: Path
) -> None:
    cfg = _config(model_type, keys)
    model = _meta_model(cfg)
    folder = tmp_path / case
    path = _write(cfg, folder)
    spec = load_hf_config(path)
    assert load_hf_config(folder) == spec  # the model folder reads the same
    assert spec.parameter_count() == sum(p.numel() for p in model.parameters())

    # Every block, tensor by tensor (names and shapes), in the groups the spec declares.
    layers = _blocks_by_layer(model)
    assert len(layers) == spec.num_layers
    expected = [
        (count, tuple(sorted(Counter(shapes).items()))) for count, shapes in spec.layer_groups()
    ]
    seen = Counter(tuple(sorted(c.items())) for c in layers.values())
    assert sorted(seen.values()) == sorted(count for count, _ in expected)
    for count, shapes in expected:
        assert seen[shapes] == count
    outside = Counter(
        (n.removeprefix("model."), tuple(p.shape))
        for n, p in model.named_parameters()
        if not n.startswith("model.layers.")
    )
    assert sum(math.prod(s) * k for (_, s), k in outside.items()) == sum(
        math.prod(s) for _, s in spec.embedding_shapes()
    )


def test_the_cases_cover_every_llama_like_model_type() -> None:
    from advisor.model.hf_config import LLAMA_LIKE

    assert {c[1] for c in CASES} == set(LLAMA_LIKE)


def test_family_specific_structure_is_read(tmp_path: Path) -> None:
    # Spot checks of what each loader branch sets, from the same configs.
    def spec(case: str) -> ModelSpec:
        _, model_type, keys = next(c for c in CASES if c[0] == case)
        return load_hf_config(_write(_config(model_type, keys), tmp_path / case))

    assert spec("qwen3").qk_norm is QkNorm.HEAD
    assert spec("olmo2").qk_norm is QkNorm.FULL
    assert spec("olmo2").block_norms is BlockNorms.POST
    assert spec("gemma3-text").block_norms is BlockNorms.SANDWICH
    assert spec("gemma3-text").tie_word_embeddings  # Gemma ties by default
    assert spec("phi3").fused_qkv and spec("phi3").fused_gate_up
    ds = spec("deepseek-v3")
    assert ds.dense_layers == (0,) and ds.shared_experts == 1 and ds.mla is not None
    assert ds.head_dim == 12 + 8
    assert spec("qwen3-moe").dense_layers == (1,)
    assert spec("qwen3-moe-sparse-step").dense_layers == (0, 2)


@pytest.mark.parametrize("model_type", sorted(HF_DEFAULTS))
def test_default_table_is_transformers_defaults(model_type: str) -> None:
    cfg = transformers.AutoConfig.for_model(model_type)
    for key, value in HF_DEFAULTS[model_type].items():
        assert getattr(cfg, key) == value, key


def test_gemma3_image_text_config_reads_its_text_decoder(tmp_path: Path) -> None:
    # Gemma 3 4B/12B/27B ship a gemma3 config whose decoder is text_config (the published
    # 4B config states only a few text keys; the rest are Gemma3TextConfig defaults).
    text = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2}
    config = {"model_type": "gemma3", "text_config": text | {"model_type": "gemma3_text"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec = load_hf_config(tmp_path)
    assert (spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim) == (8, 4, 256)
    model = _meta_model(transformers.AutoConfig.for_model("gemma3_text", **text))
    assert spec.parameter_count() == sum(p.numel() for p in model.parameters())
    assert spec.family == "gemma3"


# --- MoE and MLA activations, measured ------------------------------------------------

MEASURED = ("mixtral", "deepseek-v3", "deepseek-v3-no-q-lora-2-shared")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", MEASURED)
def test_moe_and_mla_activations_match_saved_tensor_hooks(
    case: str, dtype: str, tmp_path: Path
) -> None:
    """Every block's saved tensors (transformers' eager attention: on this CPU, SDPA falls
    back to its math kernel when the value width differs from the query's, as in MLA) summed
    over the stack, against num_layers x layer_activation_bytes (a dense/MoE average)."""
    from tests.memhelpers import count_layer_activations

    _, model_type, keys = next(c for c in CASES if c[0] == case)
    torch.manual_seed(0)
    cfg = _config(model_type, keys)
    cfg._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(cfg).to(getattr(torch, dtype))
    model.train()
    spec = load_hf_config(_write(cfg, tmp_path))
    b, s = 2, 32
    measured = sum(count_layer_activations(model, b, s, _BASE["vocab_size"]))
    precision = Precision.FP32 if dtype == "float32" else Precision.BF16
    est = _req_layers(spec) * layer_activation_bytes(spec, b, s, Attention.EAGER, precision)
    assert abs(est / measured - 1) < 0.05, (est, measured)


def _req_layers(spec: ModelSpec) -> int:
    assert spec.num_layers is not None
    return spec.num_layers


# --- names --------------------------------------------------------------------------


def test_name_comes_from_the_folder_or_the_file_stem(tmp_path: Path) -> None:
    cfg = _config("qwen3", {"head_dim": 24})
    cfg._name_or_path = ""
    folder = tmp_path / "Qwen3-8B"
    _write(cfg, folder)
    assert load_hf_config(folder).id == "qwen3-8b"
    assert load_hf_config(folder / "config.json").name == "Qwen3-8B"
    other = _write(cfg, tmp_path / "configs", "my-model.json")
    spec = load_hf_config(other)
    assert (spec.id, spec.name) == ("my-model", "my-model")  # not "configs"


def test_name_or_path_wins(tmp_path: Path) -> None:
    raw = json.loads(_write(_config("olmo2", {}), tmp_path / "x").read_text())
    raw["_name_or_path"] = "allenai/OLMo-2-1124-7B"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "config.json").write_text(json.dumps(raw))
    spec = load_hf_config(tmp_path / "configs")
    assert (spec.id, spec.name, spec.family) == (
        "olmo-2-1124-7b",
        "allenai/OLMo-2-1124-7B",
        "olmo2",
    )


# --- the shipped profiles at full size -----------------------------------------------

# The released config.json values of each shipped profile of the new families (the keys
# that decide the shapes), copied from the Hugging Face repositories the profiles cite.
_LLAMA3 = {"model_type": "llama", "vocab_size": 128_256, "max_position_embeddings": 131_072,
           "num_key_value_heads": 8}  # fmt: skip
_QWEN3 = {"model_type": "qwen3", "vocab_size": 151_936, "max_position_embeddings": 40_960,
          "head_dim": 128, "num_key_value_heads": 8}  # fmt: skip
_GEMMA3 = {"model_type": "gemma3_text", "vocab_size": 262_208, "max_position_embeddings": 131_072}
RELEASED: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": _LLAMA3 | {"hidden_size": 2048, "intermediate_size": 8192,
        "num_hidden_layers": 16, "num_attention_heads": 32, "head_dim": 64,
        "tie_word_embeddings": True},
    "llama-3.2-3b": _LLAMA3 | {"hidden_size": 3072, "intermediate_size": 8192,
        "num_hidden_layers": 28, "num_attention_heads": 24, "head_dim": 128,
        "tie_word_embeddings": True},
    "llama-3.3-70b": _LLAMA3 | {"hidden_size": 8192, "intermediate_size": 28672,
        "num_hidden_layers": 80, "num_attention_heads": 64, "tie_word_embeddings": False},
    "qwen3-0.6b": _QWEN3 | {"hidden_size": 1024, "intermediate_size": 3072,
        "num_hidden_layers": 28, "num_attention_heads": 16, "tie_word_embeddings": True},
    "qwen3-1.7b": _QWEN3 | {"hidden_size": 2048, "intermediate_size": 6144,
        "num_hidden_layers": 28, "num_attention_heads": 16, "tie_word_embeddings": True},
    "qwen3-4b": _QWEN3 | {"hidden_size": 2560, "intermediate_size": 9728,
        "num_hidden_layers": 36, "num_attention_heads": 32, "tie_word_embeddings": True},
    "qwen3-8b": _QWEN3 | {"hidden_size": 4096, "intermediate_size": 12288,
        "num_hidden_layers": 36, "num_attention_heads": 32, "tie_word_embeddings": False},
    "qwen3-14b": _QWEN3 | {"hidden_size": 5120, "intermediate_size": 17408,
        "num_hidden_layers": 40, "num_attention_heads": 40, "tie_word_embeddings": False},
    "qwen3-32b": _QWEN3 | {"hidden_size": 5120, "intermediate_size": 25600,
        "num_hidden_layers": 64, "num_attention_heads": 64, "tie_word_embeddings": False},
    "qwen3-30b-a3b": _QWEN3 | {"model_type": "qwen3_moe", "hidden_size": 2048,
        "intermediate_size": 6144, "num_hidden_layers": 48, "num_attention_heads": 32,
        "num_key_value_heads": 4, "num_experts": 128, "num_experts_per_tok": 8,
        "moe_intermediate_size": 768, "decoder_sparse_step": 1, "mlp_only_layers": [],
        "norm_topk_prob": True, "tie_word_embeddings": False},
    # https://huggingface.co/Qwen/Qwen3-235B-A22B/blob/main/config.json
    "qwen3-235b-a22b": _QWEN3 | {"model_type": "qwen3_moe", "hidden_size": 4096,
        "intermediate_size": 12288, "num_hidden_layers": 94, "num_attention_heads": 64,
        "num_key_value_heads": 4, "num_experts": 128, "num_experts_per_tok": 8,
        "moe_intermediate_size": 1536, "decoder_sparse_step": 1, "mlp_only_layers": [],
        "norm_topk_prob": True, "tie_word_embeddings": False},
    "gemma-3-1b": _GEMMA3 | {"vocab_size": 262_144, "max_position_embeddings": 32_768,
        "hidden_size": 1152, "intermediate_size": 6912, "num_hidden_layers": 26,
        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
        "sliding_window": 512, "query_pre_attn_scalar": 256},
    "gemma-3-4b": _GEMMA3 | {"hidden_size": 2560, "intermediate_size": 10240,
        "num_hidden_layers": 34, "num_attention_heads": 8, "num_key_value_heads": 4,
        "head_dim": 256, "sliding_window": 1024},
    "gemma-3-12b": _GEMMA3 | {"hidden_size": 3840, "intermediate_size": 15360,
        "num_hidden_layers": 48, "num_attention_heads": 16, "num_key_value_heads": 8,
        "head_dim": 256, "sliding_window": 1024},
    "gemma-3-27b": _GEMMA3 | {"hidden_size": 5376, "intermediate_size": 21504,
        "num_hidden_layers": 62, "num_attention_heads": 32, "num_key_value_heads": 16,
        "head_dim": 128, "query_pre_attn_scalar": 168, "sliding_window": 1024},
    "phi-4": {"model_type": "phi3", "vocab_size": 100_352, "hidden_size": 5120,
        "intermediate_size": 17920, "num_hidden_layers": 40, "num_attention_heads": 40,
        "num_key_value_heads": 10, "max_position_embeddings": 16_384,
        "tie_word_embeddings": False, "pad_token_id": 100_257, "bos_token_id": 100_257,
        "eos_token_id": 100_257},
    "deepseek-v3": {"model_type": "deepseek_v3", "vocab_size": 129_280, "hidden_size": 7168,
        "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61,
        "num_nextn_predict_layers": 1, "num_attention_heads": 128, "num_key_value_heads": 128,
        "n_shared_experts": 1, "n_routed_experts": 256, "num_experts_per_tok": 8,
        "n_group": 8, "topk_group": 4, "first_k_dense_replace": 3, "moe_layer_freq": 1,
        "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64, "v_head_dim": 128, "max_position_embeddings": 163_840,
        "tie_word_embeddings": False, "routed_scaling_factor": 2.5},
}  # fmt: skip


def test_every_new_family_profile_has_its_released_config() -> None:
    new = {i for i, p in PROFILES.items() if p.family in _NEW_FAMILIES}
    new |= {"llama-3.2-1b", "llama-3.2-3b", "llama-3.3-70b"}
    assert new == set(RELEASED)


_NEW_FAMILIES = {"qwen3", "qwen3moe", "gemma2", "gemma3", "phi3", "olmo2", "deepseekv3"}


@pytest.mark.parametrize("ident", sorted(RELEASED))
def test_shipped_profile_equals_its_config_and_transformers(ident: str, tmp_path: Path) -> None:
    released = RELEASED[ident]
    (tmp_path / "config.json").write_text(json.dumps(released))
    loaded = load_hf_config(tmp_path)
    profile = PROFILES[ident]
    ignore = {"id", "name", "source", "published_parameters", "published_parameters_source"}
    assert loaded.model_dump(exclude=ignore) == profile.model_dump(exclude=ignore)
    keys = {k: v for k, v in released.items() if k != "model_type"}
    cfg = transformers.AutoConfig.for_model(released["model_type"], **keys)
    assert sum(p.numel() for p in _meta_model(cfg).parameters()) == profile.parameter_count()


# --- active parameters against the published figures ----------------------------------


@pytest.mark.parametrize(
    ("ident", "total", "active", "tolerance"),
    [
        # Mistral AI, "Mixtral of experts" (2024): 46.7B total, 12.9B used per token.
        ("mixtral-8x7b", 46.7e9, 12.9e9, 0.005),
        # Qwen3-30B-A3B model card: 30.5B total, 3.3B activated.
        ("qwen3-30b-a3b", 30.5e9, 3.3e9, 0.02),
        # Qwen3-235B-A22B model card: 235B total, 22B activated (two digits: 3%).
        ("qwen3-235b-a22b", 235e9, 22e9, 0.03),
        # DeepSeek-V3 technical report (arXiv:2412.19437): 671B total, 37B activated per
        # token (the 14B MTP module excluded). Stated to two digits, hence 2%.
        ("deepseek-v3", 671e9, 37e9, 0.02),
    ],
)
def test_active_parameters_match_published_figures(
    ident: str, total: float, active: float, tolerance: float
) -> None:
    spec = PROFILES[ident]
    assert abs(spec.parameter_count() / total - 1) < 0.005
    assert abs(spec.active_parameter_count() / active - 1) < tolerance


def test_dense_profiles_are_fully_active() -> None:
    for spec in PROFILES.values():
        if spec.arch is not Arch.CNN and spec.num_experts == 1:
            assert spec.active_parameter_count() == spec.parameter_count(), spec.id


# --- validation of the new fields -----------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_experts": 1, "experts_per_token": 1}, "need num_experts > 1"),
        ({"dense_layers": (0, 61)}, "distinct layer indices below 61"),
        ({"dense_layers": tuple(range(61))}, "not an MoE model"),
        ({"head_dim": 128}, "head_dim (128) is the query/key head width"),
        ({"qk_norm": "head"}, "mla has its own projections"),
        ({"mlp_bias": True}, "MoE experts with biases"),
    ],
)
def test_inconsistent_moe_and_mla_fields_are_rejected(
    changes: dict[str, Any], message: str
) -> None:
    fields = PROFILES["deepseek-v3"].model_dump() | changes
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelSpec.model_validate(fields)


# --- what the other layers see: estimate JSON, the cost model's shape, the CLI -------------


@pytest.mark.parametrize("ident", ["qwen3-30b-a3b", "deepseek-v3", "mixtral-8x7b", "qwen3-8b"])
def test_estimate_json_carries_active_parameters(ident: str) -> None:
    from typer.testing import CliRunner

    from advisor.shell.cli import app

    result = CliRunner().invoke(
        app, ["estimate", "--model", ident, "--hardware", "h100-sxm-80gb", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    spec = PROFILES[ident]
    assert data["parameters"] == spec.parameter_count()
    assert data["active_parameters"] == spec.active_parameter_count()
    assert (data["active_parameters"] < data["parameters"]) == (spec.num_experts > 1)


@pytest.mark.parametrize("ident", ["deepseek-v3", "qwen3-30b-a3b", "gemma-3-27b", "phi-4"])
def test_cost_model_multiplies_the_active_parameters(ident: str) -> None:
    from advisor.cost import model_shape

    spec = PROFILES[ident]
    sh = model_shape(spec)
    outside = spec.embedding_parameter_count()
    layers = spec.layer_repeats()
    # Averages over the blocks: exact up to the integer division.
    assert 0 <= spec.active_parameter_count() - outside - sh.layer_matmul_params * layers < layers
    assert 0 <= spec.parameter_count() - outside - sh.layer_params * layers < layers


def test_cli_accepts_a_model_folder(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from advisor.shell.cli import app

    folder = tmp_path / "Qwen3-30B-A3B"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(RELEASED["qwen3-30b-a3b"]))
    result = CliRunner().invoke(
        app, ["estimate", "--model-config", str(folder), "--device", "cpu", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model_id"] == "qwen3-30b-a3b"
    assert data["active_parameters"] == PROFILES["qwen3-30b-a3b"].active_parameter_count()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_hidden_layers": 10**12}, "num_hidden_layers 1000000000000 is outside"),
        ({"num_hidden_layers": "48"}, "num_hidden_layers must be an integer"),
        ({"mlp_only_layers": "all"}, "mlp_only_layers must be a list"),
        ({"num_experts": "128"}, "num_experts must be an integer"),
        ({"hidden_size": -5}, "invalid model shape"),
        ({"num_experts_per_tok": 200}, "exceeds num_experts"),
        ({"model_type": "gemma3", "text_config": "x"}, "text_config is not a JSON object"),
        ({"model_type": "gemma3", "text_config": {}}, "num_hidden_layers missing"),
    ],
)
def test_bad_family_configs_are_user_errors(
    changes: dict[str, Any], message: str, tmp_path: Path
) -> None:
    from advisor.errors import UserError

    (tmp_path / "config.json").write_text(json.dumps(RELEASED["qwen3-30b-a3b"] | changes))
    with pytest.raises(UserError, match=re.escape(message)) as info:
        load_hf_config(tmp_path)
    assert info.value.hint


@pytest.mark.parametrize("ident", ["qwen3-30b-a3b", "deepseek-v3"])
def test_expert_parallelism_splits_only_the_routed_experts(ident: str) -> None:
    from advisor.config import Task, TrainingConfig
    from advisor.memory import DeviceOverheads, estimate_memory
    from advisor.rules.taxonomy import load_taxonomy

    spec = PROFILES[ident]
    sgd = load_taxonomy().get("sgd")

    def weights(ep: int) -> int:
        config = TrainingConfig(
            task=Task.PRETRAIN, precision=Precision.BF16, gpus=8, expert_parallel=ep
        )
        est = estimate_memory(spec, config, optimizer=sgd, device=DeviceOverheads.cpu())
        return est.breakdown["weights"]

    routed = spec.moe_layer_count() * spec.num_experts * spec.expert_parameter_count()
    assert weights(1) == 2 * spec.parameter_count()
    assert weights(8) == 2 * (spec.parameter_count() - routed + routed // 8)
