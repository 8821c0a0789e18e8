"""Model shapes: counts against published figures and against real `transformers` models."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from advisor.data.resources import profiles_dir
from advisor.errors import DataError, UserError
from advisor.model import (
    Arch,
    FamilyTraits,
    Mlp,
    ModelSpec,
    ModuleLayout,
    Norm,
    Position,
    get_model_profile,
    interpolate_llama_style,
    load_hf_config,
    load_model_profiles,
    resolve_model_size,
)
from tests.paths import FIXTURES_DIR

CONFIGS = FIXTURES_DIR / "configs"
MODELS_DIR = profiles_dir() / "models"
PROFILES = load_model_profiles()
TRANSFORMER_IDS = sorted(i for i, p in PROFILES.items() if p.arch is not Arch.CNN)
# The families whose config.json _config_json below writes; tests/model/test_model_families.py
# checks the others (Qwen3, Gemma 3, Phi-4, DeepSeek-V3 ...) from their released configs.
CLASSIC_IDS = sorted(
    i
    for i in TRANSFORMER_IDS
    if PROFILES[i].family in ("llama", "mistral", "mixtral", "qwen2", "opt", "gpt2", "bert")
)
TINY = sorted(CONFIGS.glob("tiny-*.json"))


# --- published figures -----------------------------------------------------------------


def test_every_profile_file_is_checked_against_its_published_count() -> None:
    files = sorted(MODELS_DIR.glob("*.yaml"))
    checked = 0
    for path in files:
        spec = PROFILES[path.stem]
        assert spec.published_parameters is not None, spec.id
        assert spec.published_parameters_source, spec.id
        error = abs(spec.parameter_count() - spec.published_parameters) / spec.published_parameters
        assert error < _tolerance(spec.published_parameters), (
            f"{spec.id}: {spec.parameter_count():,} vs {spec.published_parameters:,}"
        )
        checked += 1
    assert checked == len(files) == len(PROFILES)
    assert checked >= 20


def _tolerance(published: int) -> float:
    """1%, or half a unit of the figure's last stated digit when it is coarser (Qwen3's 1.7B
    stands for 1.65B-1.75B)."""
    digits = str(published).rstrip("0")
    unit = 10 ** (len(str(published)) - len(digits))
    return max(0.01, unit / 2 / published)


def test_the_required_architectures_are_shipped() -> None:
    required = {
        "llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3.1-8b", "llama-3.1-70b",
        "llama-3.1-405b", "mistral-7b", "mixtral-8x7b", "qwen2.5-0.5b", "qwen2.5-1.5b",
        "qwen2.5-7b", "qwen2.5-72b", "opt-125m", "opt-1.3b", "opt-6.7b", "opt-13b",
        "opt-30b", "opt-66b", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl",
        "bert-large", "resnet-50",
    }  # fmt: skip
    assert required <= set(PROFILES)
    for spec in PROFILES.values():
        assert spec.source.startswith("https://"), spec.id


def test_mixtral_total_and_active_counts_match_mistral_figures() -> None:
    # Mistral AI: "46.7B total parameters but only uses 12.9B parameters per token".
    spec = PROFILES["mixtral-8x7b"]
    assert abs(spec.parameter_count() / 46.7e9 - 1) < 0.005
    assert abs(spec.active_parameter_count() / 12.9e9 - 1) < 0.005
    dense = PROFILES["mistral-7b"]
    assert dense.active_parameter_count() == dense.parameter_count()


def test_resnet50_matches_torchvision_num_params_exactly() -> None:
    # torchvision's ResNet50_Weights.IMAGENET1K_V1 meta: num_params 25557032.
    spec = PROFILES["resnet-50"]
    assert spec.parameter_count() == 25_557_032
    assert spec.layer_repeats() == 1
    assert ("fc.weight", (1000, 2048)) in spec.embedding_shapes()
    assert ("layer4.2.conv3.weight", (2048, 512, 1, 1)) in spec.layer_matrix_shapes()


@pytest.mark.parametrize("ident", sorted(PROFILES))
def test_layers_and_outside_tensors_add_up(ident: str) -> None:
    spec = PROFILES[ident]
    outside = sum(math.prod(s) for _, s in spec.embedding_shapes())
    groups = spec.layer_groups()
    blocks = sum(n * sum(math.prod(s) for _, s in g) for n, g in groups)
    assert spec.parameter_count() == blocks + outside
    assert sum(n for n, _ in groups) == spec.layer_repeats()
    if len(groups) == 1:
        assert blocks == spec.layer_repeats() * spec.layer_parameter_count()
    for _, group in groups:
        names = [n for n, _ in group + spec.embedding_shapes()]
        assert len(names) == len(set(names))


def test_llama_block_shapes() -> None:
    shapes = dict(PROFILES["llama-3.1-8b"].layer_matrix_shapes())
    assert shapes["self_attn.q_proj.weight"] == (4096, 4096)
    assert shapes["self_attn.k_proj.weight"] == (1024, 4096)  # 8 kv heads x 128
    assert shapes["mlp.gate_proj.weight"] == (14336, 4096)
    assert shapes["mlp.down_proj.weight"] == (4096, 14336)


# --- exact counts against real transformers models -------------------------------------


def _hf_model(cfg_dict: dict[str, Any], meta: bool = False) -> Any:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.AutoConfig.for_model(**cfg_dict)
    auto = transformers.AutoModel if cfg_dict["model_type"] == "bert" else None
    auto = auto or transformers.AutoModelForCausalLM
    if meta:
        # NOTE: the meta device allocates nothing, so full-size models cost milliseconds.
        with torch.device("meta"):
            return auto.from_config(cfg)
    return auto.from_config(cfg)


def _numel(model: Any) -> int:
    # parameters() yields a tied embedding/LM-head tensor once, as parameter_count counts it.
    return sum(p.numel() for p in model.parameters())


def _layer_stack(model: Any, layers: int) -> tuple[str, Any]:
    import torch

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == layers:
            return name, mod
    raise AssertionError("no layer stack found")


@pytest.mark.heavy
@pytest.mark.parametrize("path", TINY, ids=[p.stem for p in TINY])
def test_tiny_random_model_counts_exactly(path: Path) -> None:
    spec = load_hf_config(path)
    model = _hf_model(json.loads(path.read_text()))
    assert _numel(model) == spec.parameter_count()

    stack_name, stack = _layer_stack(model, spec.layer_repeats())
    block = [tuple(p.shape) for p in stack[0].parameters()]
    if spec.num_experts > 1:
        # transformers 5 stores the experts fused in 3-D tensors; the numbers still agree.
        assert sum(math.prod(s) for s in block) == spec.layer_parameter_count()
    else:
        assert Counter(block) == Counter(s for _, s in spec.layer_matrix_shapes())
    outside = [tuple(p.shape) for n, p in model.named_parameters() if not n.startswith(stack_name)]
    assert Counter(outside) == Counter(s for _, s in spec.embedding_shapes())


def test_tiny_fixtures_cover_every_supported_model_type() -> None:
    kinds = {json.loads(p.read_text())["model_type"] for p in TINY}
    assert kinds == {"llama", "mistral", "mixtral", "qwen2", "opt", "gpt2", "bert"}
    assert any(load_hf_config(p).tie_word_embeddings for p in TINY if "qwen2" in p.stem)


def test_missing_keys_take_the_transformers_defaults() -> None:
    # Mistral assumes 8 kv heads when config.json omits them; Llama assumes the head count.
    assert load_hf_config(CONFIGS / "tiny-mistral.json").num_key_value_heads == 8
    spec = load_hf_config(CONFIGS / "tiny-llama-bias-tied.json")
    assert (spec.num_key_value_heads, spec.head_dim, spec.qkv_bias) == (4, 32, True)
    gpt2 = load_hf_config(CONFIGS / "tiny-gpt2.json")
    assert gpt2.intermediate_size == 4 * 48  # n_inner null -> 4 h


def _config_json(spec: ModelSpec) -> dict[str, Any]:
    """The config.json transformers would need for this profile (written here, not by the code)."""
    common = {"vocab_size": spec.vocab_size, "tie_word_embeddings": spec.tie_word_embeddings}
    if spec.family == "gpt2":
        return common | {
            "model_type": "gpt2", "n_embd": spec.hidden_size, "n_layer": spec.num_layers,
            "n_head": spec.num_attention_heads, "n_inner": spec.intermediate_size,
            "n_positions": spec.max_position_embeddings, "bos_token_id": 0, "eos_token_id": 0,
        }  # fmt: skip
    common |= {
        "model_type": spec.family, "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_layers, "num_attention_heads": spec.num_attention_heads,
        "max_position_embeddings": spec.max_position_embeddings,
    }  # fmt: skip
    if spec.family == "opt":
        return common | {"ffn_dim": spec.intermediate_size, "word_embed_proj_dim": spec.hidden_size}
    if spec.family == "bert":
        return common | {
            "intermediate_size": spec.intermediate_size, "type_vocab_size": spec.type_vocab_size,
            "pad_token_id": 0,
        }  # fmt: skip
    common |= {
        "intermediate_size": spec.intermediate_size, "head_dim": spec.head_dim,
        "num_key_value_heads": spec.num_key_value_heads, "mlp_bias": spec.mlp_bias,
    }  # fmt: skip
    if spec.family == "llama":
        common["attention_bias"] = spec.qkv_bias
    if spec.family == "mixtral":
        common |= {
            "num_local_experts": spec.num_experts,
            "num_experts_per_tok": spec.experts_per_token,
        }
    return common


_SHAPE_FIELDS = (
    "hidden_size", "num_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "intermediate_size", "vocab_size", "max_position_embeddings", "mlp", "norm", "position",
    "learned_position_offset", "qkv_bias", "out_bias", "mlp_bias", "num_experts",
    "experts_per_token", "type_vocab_size", "pooler",
)  # fmt: skip


@pytest.mark.heavy
@pytest.mark.parametrize("ident", CLASSIC_IDS)
def test_full_size_profile_counts_exactly_on_the_meta_device(ident: str, tmp_path: Path) -> None:
    spec = PROFILES[ident]
    cfg = _config_json(spec)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = load_hf_config(tmp_path)
    for field in _SHAPE_FIELDS:
        assert getattr(loaded, field) == getattr(spec, field), field
    assert _numel(_hf_model(cfg, meta=True)) == spec.parameter_count()


# --- sizes -> shapes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ident"),
    [
        ("125M", "opt-125m"),
        ("1.3B", "opt-1.3b"),
        ("7B", "llama-2-7b"),
        ("8B", "llama-3.1-8b"),
        ("13B", "llama-2-13b"),
        ("70B", "llama-3.1-70b"),
        ("405B", "llama-3.1-405b"),
        ("10M", "opt-125m"),  # below the smallest profile: the smallest
    ],
)
def test_resolve_model_size_gives_the_documented_profile(text: str, ident: str) -> None:
    assert resolve_model_size(text).id == ident


def test_one_trillion_is_a_synthetic_llama_style_shape() -> None:
    spec = resolve_model_size("1T")
    assert spec.id == "llama-style-1t"
    assert "synthetic" in spec.name
    assert spec.published_parameters is None
    assert abs(spec.parameter_count() / 1e12 - 1) < 0.05
    h = spec.hidden_size
    assert h is not None and spec.intermediate_size is not None
    assert (spec.head_dim, spec.num_key_value_heads) == (128, 8)
    assert spec.intermediate_size % 256 == 0 and abs(spec.intermediate_size / h - 3.5) < 0.05
    assert (spec.mlp, spec.norm, spec.position) == (Mlp.GATED_SILU, Norm.RMSNORM, Position.ROPE)


@pytest.mark.parametrize("count", [3 * 10**8, 10**9, 3 * 10**9, 3 * 10**10, 1.75e11, 2.5e12])
def test_interpolation_hits_the_requested_count(count: float) -> None:
    spec = interpolate_llama_style(int(count))
    assert abs(spec.parameter_count() / count - 1) < 0.01
    assert spec.hidden_size is not None and spec.num_layers is not None
    assert spec.hidden_size % 128 == 0


@pytest.mark.parametrize("count", ["3B", "30B"])
def test_gaps_between_profiles_interpolate(count: str) -> None:
    assert resolve_model_size(count).id == f"llama-style-{count.lower()}"


@pytest.mark.heavy
def test_interpolated_shape_is_a_real_llama(tmp_path: Path) -> None:
    spec = interpolate_llama_style(10**9)
    assert _numel(_hf_model(_config_json(spec), meta=True)) == spec.parameter_count()


@pytest.mark.parametrize("text", ["7Q", "-3B", "0", "", "B7"])
def test_bad_sizes_raise_user_error(text: str) -> None:
    with pytest.raises(UserError) as info:
        resolve_model_size(text)
    assert info.value.hint


# --- profiles: lookup and validation ---------------------------------------------------


def test_get_model_profile() -> None:
    assert get_model_profile("Llama-2-7B").id == "llama-2-7b"
    with pytest.raises(UserError) as info:
        get_model_profile("llama-2-8b")
    assert "llama-2-7b" in info.value.hint and "resnet-50" in info.value.hint


def test_broken_profiles_report_every_problem(tmp_path: Path) -> None:
    good = (MODELS_DIR / "gpt2.yaml").read_text()
    (tmp_path / "gpt2.yaml").write_text(good)
    (tmp_path / "a.yaml").write_text(good.replace("hidden_size: 768", "hidden_size: -1"))
    (tmp_path / "b.yaml").write_text("id: b\nname: [unclosed\n")
    (tmp_path / "c.yaml").write_text(good.replace("id: gpt2", "id: c").replace("mlp: gelu\n", ""))
    (tmp_path / "d.yaml").write_text(
        (MODELS_DIR / "resnet-50.yaml").read_text().replace("id: resnet-50", "id: d")
        + "hidden_size: 12\n"
    )
    (tmp_path / "e.yaml").write_text(good)  # valid, but named e and a second gpt2
    with pytest.raises(DataError) as info:
        load_model_profiles(tmp_path)
    problems = info.value.problems
    assert len(problems) == 6, problems
    text = "\n".join(problems)
    hidden_line = good.splitlines().index("hidden_size: 768") + 1
    assert f"a.yaml:{hidden_line}: gpt2: hidden_size: Input should be greater than 0" in text
    assert "b.yaml:" in text and "invalid YAML" in text
    assert "c.yaml:" in text and ": c: -: fields required for a decoder model: mlp" in text
    assert "d.yaml:" in text and "transformer fields on a cnn model: hidden_size" in text
    assert "e.yaml:2: gpt2: id: does not match the file name 'e'" in text
    assert "gpt2.yaml:2: gpt2: id: duplicate profile id" in text


def test_spec_rejects_inconsistent_heads() -> None:
    raw = PROFILES["llama-2-70b"].model_dump() | {"num_key_value_heads": 7}
    with pytest.raises(ValueError, match="not a multiple"):
        ModelSpec.model_validate(raw)
    with pytest.raises(ValueError, match="pattern"):
        ModelSpec.model_validate(PROFILES["gpt2"].model_dump() | {"id": "GPT 2"})


# --- load_hf_config errors -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("does-not-exist.json", "not found"),
        ("bad-json.json", "invalid JSON"),
        ("not-an-object.json", "expected a JSON object"),
        ("unknown-model-type.json", "unsupported model_type 't5'"),
        ("missing-hidden-size.json", "hidden_size missing"),
        ("opt-350m-style.json", "not modelled"),
    ],
)
def test_load_hf_config_errors(name: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        load_hf_config(CONFIGS / name)
    assert info.value.hint


def test_load_hf_config_accepts_a_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text((CONFIGS / "tiny-opt.json").read_text())
    spec = load_hf_config(tmp_path)
    assert (spec.id, spec.family, spec.learned_position_offset) == ("opt", "opt", 2)
    assert spec.source.startswith("file://")
    with pytest.raises(UserError, match="not found"):
        load_hf_config(tmp_path / "empty")


# --- family traits and the typed shape ------------------------------------------------


@pytest.mark.parametrize(
    ("config", "layout", "conv1d"),
    [
        ("tiny-gpt2.json", ModuleLayout.GPT2, True),
        ("tiny-opt.json", ModuleLayout.OPT, False),
        ("tiny-bert.json", ModuleLayout.BERT, False),
        ("tiny-llama.json", ModuleLayout.LLAMA, False),
        ("tiny-mixtral.json", ModuleLayout.LLAMA, False),
    ],
)
def test_the_hf_readers_declare_the_family_traits(
    config: str, layout: ModuleLayout, conv1d: bool
) -> None:
    spec = load_hf_config(CONFIGS / config)
    assert spec.traits.layout is layout
    # transformers' GPT2Attention holds c_attn as a Conv1D (weight (in, out)); the others nn.Linear.
    assert spec.traits.conv1d is conv1d
    assert spec.traits.python_gelu is conv1d  # GPT-2's NewGELUActivation, written in Python


def test_profiles_take_their_family_traits_and_an_encoder_follows_bert() -> None:
    for spec in PROFILES.values():
        if spec.family in ("gpt2", "opt", "bert"):
            assert spec.traits.layout.value == spec.family, spec.id
        elif spec.family.startswith("gemma"):
            # Gemma's RMSNorm keeps its fp32 normalised tensor (transformers Gemma3RMSNorm).
            assert spec.traits == FamilyTraits(fp32_norm_output=True), spec.id
        elif spec.family == "deepseekv3":
            # DeepSeek-V3's router reads hidden.float() (transformers DeepseekV3TopkRouter).
            assert spec.traits == FamilyTraits(router_fp32_input=True), spec.id
        elif spec.arch is Arch.DECODER:
            assert spec.traits == FamilyTraits(), spec.id
    bert = PROFILES["bert-large"].model_dump()
    other = ModelSpec.model_validate({**bert, "id": "enc", "family": "roberta", "traits": None})
    assert other.traits.layout is ModuleLayout.BERT and not other.traits.conv1d
    assert other.parameter_count() == PROFILES["bert-large"].parameter_count()


@pytest.mark.parametrize("model_id", TRANSFORMER_IDS)
def test_the_typed_shape_states_the_spec_dimensions(model_id: str) -> None:
    spec = PROFILES[model_id]
    shape = spec.shape
    assert (shape.hidden, shape.layers, shape.heads) == (
        spec.hidden_size,
        spec.num_layers,
        spec.num_attention_heads,
    )
    assert (shape.kv_heads, shape.head_dim, shape.vocab) == (
        spec.num_key_value_heads,
        spec.head_dim,
        spec.vocab_size,
    )
    assert shape.moe_layers == spec.moe_layer_count()
    assert shape.expert_ffn == spec.expert_intermediate_size
    short = shape.as_dict()
    assert list(short)[:3] == ["h", "L", "a"] and short["Lm"] == shape.moe_layers
    assert short["mla"] == int(spec.mla is not None)
