"""The general --model-config path against transformers' own models.

Each fixture under tests/fixtures/hfconfigs is a tiny config.json written by hand from the
family's documented config fields. Parameter counts are checked against the model
transformers builds on the meta device from the same file (for a vision-language model:
the whole model, less its vision tower and projector); the activation memory of the
families whose fields rebuild every tensor against saved-tensor hooks on a real tiny
model on the CPU, as the built-in families are (tests/memory/test_memory_architectures.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from advisor.config import Attention, Precision
from advisor.errors import UserError
from advisor.memory import layer_activation_bytes, param_tensors
from tests.paths import FIXTURES_DIR, ROOT_DIR

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from advisor.model.hfmeta import spec_from_any_config  # noqa: E402
from tests.memhelpers import count_layer_activations  # noqa: E402

pytestmark = pytest.mark.heavy

FIXTURES = FIXTURES_DIR / "hfconfigs"
ROOT = ROOT_DIR
FAMILIES = [
    "gpt-oss",
    "llama4",
    "nemotron-h",
    "mamba2",
    "phi",
    "gpt-neox",
    "gemma",
    "falcon",
    "bloom",
    "t5",
    "qwen2-vl",
    "llava",
    "deepseek-v2",
]
# The families whose representative fields rebuild every tensor (no inventory carried).
EXACT = {"gpt-neox", "gemma", "llama4", "qwen2-vl", "llava", "deepseek-v2", "falcon"}
_TOWERS = ("vision", "visual", "multi_modal_projector")


def _cfg(name: str) -> dict[str, Any]:
    loaded = json.loads((FIXTURES / f"{name}.json").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _spec(name: str) -> Any:
    return spec_from_any_config(_cfg(name), FIXTURES / f"{name}.json")


def _hf_config(cfg: dict[str, Any]) -> Any:
    rest = {k: v for k, v in cfg.items() if k not in ("model_type", "_name_or_path")}
    return transformers.AutoConfig.for_model(cfg["model_type"], **rest)


def _transformers_count(cfg: dict[str, Any]) -> int:
    """transformers' own parameter count of the language model, on the meta device."""
    config = _hf_config(cfg)
    with torch.device("meta"):
        if "text_config" in cfg:
            model = transformers.AutoModelForImageTextToText.from_config(config)
            params = [
                p for n, p in model.named_parameters() if not any(part in n for part in _TOWERS)
            ]
            return sum(p.numel() for p in params)
        auto = (
            transformers.AutoModelForSeq2SeqLM
            if config.is_encoder_decoder
            else transformers.AutoModelForCausalLM
        )
        model = auto.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", FAMILIES)
def test_parameter_count_equals_transformers_on_the_meta_device(name: str) -> None:
    spec = _spec(name)
    expected = _transformers_count(_cfg(name))
    assert spec.parameter_count() == expected
    # The memory model's tensors (weights, gradients, optimizer states) count the same.
    assert sum(t.numel * t.count for t in param_tensors(spec)) == expected
    assert (spec.inventory is None) == (name in EXACT), spec.inventory


def test_the_hybrid_and_moe_layouts_are_read_from_the_module() -> None:
    nemo = _spec("nemotron-h")  # pattern M*-E: Mamba, attention, MLP, MoE
    assert nemo.inventory is not None and nemo.num_layers == 4
    assert nemo.num_experts == 4 and nemo.dense_layers == (0, 1, 2)
    assert any("ssm_in" in t.role for g in nemo.inventory.groups for t in g.tensors)
    # 4 routed experts of width 32 per MoE layer; 2 per token; shared width 64 = 2 x 32.
    assert nemo.experts_per_token == 2 and nemo.shared_experts == 2
    oss = _spec("gpt-oss")
    per_expert = 3 * 64 * 32 + 2 * 32 + 64  # gate_up and down matrices and their biases
    assert oss.expert_parameter_count() == per_expert
    assert oss.active_parameter_count() == oss.parameter_count() - 2 * 2 * per_expert
    l4 = _spec("llama4")  # interleave_moe_layer_step 2: layers 1 and 3 are MoE
    assert l4.dense_layers == (0, 2) and l4.shared_experts == 1
    assert l4.intermediate_size == 96 and l4.moe_intermediate_size == 32


def test_a_module_that_cannot_be_placed_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=re.escape("cannot place module 'rwkv.blocks.0.attention'")):
        _spec("unplaceable")
    env = {**os.environ, "OPTADVISE_CACHE_DIR": str(tmp_path), "NO_COLOR": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "advisor",
            "estimate",
            "--model-config",
            str(FIXTURES / "unplaceable.json"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    first = out.stderr.strip().splitlines()[0]
    assert first.startswith("Error: ") and "rwkv.blocks.0.attention" in first


def test_an_unknown_model_type_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown to transformers"):
        spec_from_any_config({"model_type": "no_such_arch", "hidden_size": 8}, FIXTURES / "x.json")


_SECOND_RUN = """
import json, sys
from pathlib import Path
from advisor.model.hfmeta import spec_from_any_config
p = Path(sys.argv[1])
spec = spec_from_any_config(json.loads(p.read_text()), p)
print(json.dumps([spec.parameter_count(), "torch" in sys.modules, "transformers" in sys.modules]))
"""


def test_the_inventory_is_cached_by_content_and_a_warm_run_imports_no_torch(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "OPTADVISE_CACHE_DIR": str(tmp_path)}
    argv = [sys.executable, "-c", _SECOND_RUN, str(FIXTURES / "falcon.json")]
    cold = json.loads(
        subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    )
    warm = json.loads(
        subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    )
    assert cold == [_transformers_count(_cfg("falcon")), True, True]
    assert warm == [cold[0], False, False]
    # The key is the content: the same config under another name is a hit too.
    copy = tmp_path / "elsewhere.json"
    copy.write_text(json.dumps(_cfg("falcon")))
    argv[-1] = str(copy)
    again = json.loads(
        subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    )
    assert again == [cold[0], False, False]


def test_a_built_in_family_never_imports_torch_or_transformers(tmp_path: Path) -> None:
    code = _SECOND_RUN
    env = {**os.environ, "OPTADVISE_CACHE_DIR": str(tmp_path)}
    cfg = FIXTURES_DIR / "configs" / "tiny-llama.json"
    out = subprocess.run(
        [sys.executable, "-c", code, str(cfg)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)[1:] == [False, False]


# --- activations, measured on the CPU -----------------------------------------------------


def _cpu_model(name: str, attn: str, dtype: str) -> Any:
    cfg = _cfg(name)
    config = _hf_config(cfg).get_text_config(decoder=True)
    config._attn_implementation = attn
    torch.manual_seed(0)
    try:
        model = transformers.AutoModelForCausalLM.from_config(config)
    except ValueError:
        model = transformers.AutoModel.from_config(config)  # a VLM's text tower
    return model.to(getattr(torch, dtype)).train()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
# BLOOM carries its inventory (a LayerNorm on the embeddings) but its blocks map exactly.
# GPT-NeoX, Falcon and Phi run attention and the MLP side by side (two norms on one input,
# one norm read by both); Phi's gelu_new is GPT-2's GELU written out in Python.
# gpt-oss (grouped experts, a clamped SwiGLU, attention sinks) and Llama 4 (every expert
# on every token, an L2 q/k norm, a 16-bit eager softmax) run their own kernels
# (advisor.model.traits.MoeKernel). Llama 4's NoPE layers skip the q/k norm the per-block
# figure counts on all, and its RoPE table is complex64 (s x head_dim / 2 x 8 bytes): within
# the MoE tolerance.
@pytest.mark.parametrize(
    "name",
    [
        "gemma",
        "qwen2-vl",
        "llava",
        "bloom",
        "deepseek-v2",
        "gpt-neox",
        "falcon",
        "phi",
        "gpt-oss",
        "llama4",
        "mamba2",
        "nemotron-h",
    ],
)
def test_activations_of_exactly_mapped_families_match_saved_tensor_hooks(
    name: str, dtype: str
) -> None:
    spec = _spec(name)
    model = _cpu_model(name, "eager", dtype)
    b, s = 2, 32
    measured = count_layer_activations(model, b, s, spec.vocab_size)
    precision = Precision.FP32 if dtype == "float32" else Precision.BF16
    per_block = layer_activation_bytes(spec, b, s, Attention.EAGER, precision)
    # Each block's RoPE saves the shared cos/sin tables (s x rotary width); the hooks
    # attribute them to every block, the model counts them once (as in
    # tests/memory/test_memory_architectures.py).
    # Qwen2-VL's M-RoPE takes positions per sequence (3 x b x s ids): its tables are b x.
    rope = (spec.rotary_dim or spec.head_dim) if spec.position.value == "rope" else 0
    if spec.mla is not None:  # MLA's RoPE tables are as wide as its rotary part
        rope = spec.mla.qk_rope_head_dim
    rows = b if name == "qwen2-vl" else 1
    tables = 2 * rows * s * rope * (4 if dtype == "float32" else 2)
    est = len(measured) * (per_block + tables)
    tol = 0.05 if spec.num_experts > 1 else 0.01
    assert est == pytest.approx(sum(measured), rel=tol), (est, sum(measured), measured)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["mamba2", "nemotron-h"])
def test_the_mamba_scan_over_several_chunks_matches_saved_tensor_hooks(
    name: str, dtype: str
) -> None:
    """transformers' chunked scan pads the sequence to whole chunks and copies the chunk
    states once there are several (Mamba-2's chunk is 256, Nemotron-H's 128: 300 tokens make
    2 and 3 chunks)."""
    spec = _spec(name)
    assert spec.ssm is not None
    model = _cpu_model(name, "eager", dtype)
    b, s = 1, 300
    measured = count_layer_activations(model, b, s, spec.vocab_size)
    precision = Precision.FP32 if dtype == "float32" else Precision.BF16
    est = len(measured) * layer_activation_bytes(spec, b, s, Attention.EAGER, precision)
    assert est == pytest.approx(sum(measured), rel=0.01), (est, sum(measured), measured)


def test_the_mamba_mixer_shape_is_read_from_its_tensors_and_config() -> None:
    ssm = _spec("nemotron-h").ssm
    assert ssm is not None
    # mamba_num_heads 8 x mamba_head_dim 16; 2 groups of state 16 for B and C; the conv's
    # window; NemotronHConfig's default chunk of 128.
    assert (ssm.num_heads, ssm.head_dim, ssm.n_groups, ssm.state_size) == (8, 16, 2, 16)
    assert (ssm.conv_kernel, ssm.chunk_size, ssm.in_proj) == (4, 128, 2 * 128 + 2 * 32 + 8)


# --- released configs against published counts -------------------------------------------

RELEASED = FIXTURES / "released"
# (total, tolerance, source): the shape keys of each released config.json, copied by hand.
PUBLISHED = {
    "bloom-560m": (559_214_592, 0, "huggingface.co/bigscience/bloom-560m model card"),
    "pythia-1.4b": (
        1_414_647_808,
        0,
        "Biderman et al. 2023, Pythia (github.com/EleutherAI/pythia, models table)",
    ),
    # Gemma Team 2024, Gemma report Table 2: 786,432,000 embedding + 7,751,248,896 others.
    "gemma-7b": (786_432_000 + 7_751_248_896, 0, "Gemma Team 2024, arXiv:2403.08295"),
    # OpenAI 2025, gpt-oss-120b & gpt-oss-20b model card, Table 1 (two decimals of a B).
    "gpt-oss-20b": (20_910_000_000, 5_000_000, "OpenAI 2025 gpt-oss model card"),
    "gpt-oss-120b": (116_830_000_000, 5_000_000, "OpenAI 2025 gpt-oss model card"),
    # Raffel et al. 2020 (T5), section 3.7: Base "about 220 million".
    "t5-base": (220_000_000, 5_000_000, "Raffel et al. 2020, JMLR 21(140)"),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_released_configs_match_the_published_parameter_counts(name: str) -> None:
    path = RELEASED / f"{name}.json"
    spec = spec_from_any_config(json.loads(path.read_text()), path)
    total, tol, _source = PUBLISHED[name]
    assert abs(spec.parameter_count() - total) <= tol, spec.parameter_count()


@pytest.mark.parametrize(("name", "active"), [("gpt-oss-20b", 3.61e9), ("gpt-oss-120b", 5.13e9)])
def test_gpt_oss_active_parameters_match_the_model_card(name: str, active: float) -> None:
    """The card's active count leaves the input embedding out (it counts the unembedding);
    the tool's convention, as Mixtral's and DeepSeek's figures, counts both."""
    path = RELEASED / f"{name}.json"
    spec = spec_from_any_config(json.loads(path.read_text()), path)
    assert spec.vocab_size is not None and spec.hidden_size is not None
    embedding = spec.vocab_size * spec.hidden_size
    assert abs(spec.active_parameter_count() - embedding - active) <= 5e6


def _real_model(cfg: dict[str, Any]) -> Any:
    """The language model of ``cfg`` on the CPU with real fp32 storage."""
    config = _hf_config(cfg)
    torch.manual_seed(0)
    if "text_config" in cfg:
        model = transformers.AutoModelForImageTextToText.from_config(config)
        return [p for n, p in model.named_parameters() if not any(t in n for t in _TOWERS)]
    auto = (
        transformers.AutoModelForSeq2SeqLM
        if config.is_encoder_decoder
        else transformers.AutoModelForCausalLM
    )
    return list(auto.from_config(config).parameters())


@pytest.mark.parametrize("name", FAMILIES)
def test_parameter_memory_matches_real_tensors_and_adamw_state(name: str) -> None:
    """Weights and AdamW's states of the estimate against a real tiny model's fp32 tensors:
    the parameter storage, then the state tensors torch.optim.AdamW allocates at a step."""
    from advisor.config import Task, TrainingConfig
    from advisor.memory import DeviceOverheads, estimate_memory
    from advisor.rules.taxonomy import load_taxonomy

    params = _real_model(_cfg(name))
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in params}
    for p in params:
        p.grad = torch.zeros_like(p)
    opt = torch.optim.AdamW(params, lr=1e-3)
    opt.step()
    state = sum(
        v.untyped_storage().nbytes()
        for s in opt.state.values()
        for k, v in s.items()
        if k in ("exp_avg", "exp_avg_sq")
    )
    config = TrainingConfig(task=Task.PRETRAIN, precision=Precision.FP32)
    est = estimate_memory(
        _spec(name), config, optimizer=load_taxonomy().get("adamw"), device=DeviceOverheads.cpu()
    )
    assert est.breakdown["weights"] == sum(storages.values())
    assert est.breakdown["gradients"] == sum(storages.values())
    assert est.breakdown["optimizer_states"] == state


def test_without_transformers_the_general_path_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.metadata

    real = importlib.metadata.version

    def version(name: str) -> str:
        if name == "transformers":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(UserError, match="transformers is not installed") as info:
        _spec("falcon")
    assert "optadvise[hf]" in info.value.hint


def test_a_config_transformers_cannot_build_is_one_user_error() -> None:
    bad = {"model_type": "phi", "hidden_size": -64, "num_hidden_layers": 2}
    with pytest.raises(UserError, match="transformers cannot build the model"):
        spec_from_any_config(bad, FIXTURES / "bad.json")


def test_the_note_names_the_reader_and_what_the_activations_approximate() -> None:
    from advisor import notes

    notes.take()
    _spec("llama4")
    _spec("gemma")
    posted = notes.take()
    assert any("Llama4ForCausalLM" in n and "chunked local attention" in n for n in posted)
    assert any("GemmaForCausalLM" in n and "every tensor maps" in n for n in posted)
