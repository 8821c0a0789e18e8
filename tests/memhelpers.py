"""Test helpers for the memory model: tiny real Hugging Face models and exact byte counts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# Shapes of the verification grid: small enough for bf16 on a 2-core CPU, varied enough
# (GQA, biases, LayerNorm, fused QKV, learned positions, ReLU / GELU / SwiGLU).
SHAPES: dict[str, dict[str, Any]] = {
    "llama": dict(
        family="llama",
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=176,
        vocab_size=256,
        num_layers=2,
        b=2,
        s=32,
    ),
    "qwen2": dict(
        family="qwen2",
        hidden_size=96,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=224,
        vocab_size=320,
        num_layers=2,
        b=1,
        s=48,
    ),
    "gpt2": dict(
        family="gpt2",
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=256,
        vocab_size=200,
        num_layers=2,
        b=2,
        s=24,
    ),
    "opt": dict(
        family="opt",
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=128,
        vocab_size=200,
        num_layers=2,
        b=1,
        s=40,
    ),
}


@dataclass(frozen=True)
class FallbackSpec:
    """Stand-in with ModelSpec's fields, used only until advisor.model.spec exists."""

    id: str
    name: str
    family: str
    arch: str
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    mlp: str
    norm: str
    position: str
    qkv_bias: bool
    out_bias: bool
    mlp_bias: bool
    tie_word_embeddings: bool
    source: str = ""
    learned_position_offset: int = 0
    num_experts: int = 1
    experts_per_token: int = 1


def spec_fields(shape: dict[str, Any]) -> dict[str, Any]:
    """ModelSpec fields of one grid shape, as the HF config of that family implies."""
    fam = shape["family"]
    llama_like = fam in ("llama", "qwen2")
    return dict(
        id=f"tiny-{fam}",
        name=f"tiny {fam}",
        family=fam,
        arch="decoder",
        hidden_size=shape["hidden_size"],
        num_layers=shape["num_layers"],
        num_attention_heads=shape["num_attention_heads"],
        num_key_value_heads=shape["num_key_value_heads"],
        head_dim=shape["hidden_size"] // shape["num_attention_heads"],
        intermediate_size=shape["intermediate_size"],
        vocab_size=shape["vocab_size"],
        max_position_embeddings=128,
        mlp="gated-silu" if llama_like else ("gelu" if fam == "gpt2" else "relu"),
        norm="rmsnorm" if llama_like else "layernorm",
        position="rope" if llama_like else "learned",
        qkv_bias=fam in ("qwen2", "gpt2", "opt"),
        out_bias=fam in ("gpt2", "opt"),
        mlp_bias=fam in ("gpt2", "opt"),
        tie_word_embeddings=fam in ("gpt2", "opt"),
        source="https://github.com/huggingface/transformers (tiny test config)",
        learned_position_offset=2 if fam == "opt" else 0,
    )


def make_spec(**fields: Any) -> Any:
    """A ModelSpec when advisor.model.spec is importable, else the stand-in."""
    try:
        from advisor.model.spec import ModelSpec
    except ImportError:
        return FallbackSpec(**fields)
    known = set(ModelSpec.model_fields)
    return ModelSpec(**{k: v for k, v in fields.items() if k in known})


def spec_for(name: str, **overrides: Any) -> Any:
    """The spec of grid shape ``name``, with field overrides."""
    fields = spec_fields(SHAPES[name])
    fields.update(overrides)
    return make_spec(**fields)


def replace_spec(spec: Any, **changes: Any) -> Any:
    """A copy of ``spec`` with some fields changed (pydantic or dataclass)."""
    if dataclasses.is_dataclass(spec):
        return dataclasses.replace(spec, **changes)  # type: ignore[type-var]
    fields = spec.model_dump()
    fields.update(changes)
    return type(spec)(**fields)


def build_model(name: str, attn: str = "sdpa") -> Any:
    """A randomly initialised HF causal LM of grid shape ``name`` (no download), dropout 0."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    sh = SHAPES[name]
    h, a, f, V, L = (
        sh["hidden_size"],
        sh["num_attention_heads"],
        sh["intermediate_size"],
        sh["vocab_size"],
        sh["num_layers"],
    )
    fam = sh["family"]
    if fam in ("llama", "qwen2"):
        cls_cfg, cls = (
            (tf.LlamaConfig, tf.LlamaForCausalLM)
            if fam == "llama"
            else (tf.Qwen2Config, tf.Qwen2ForCausalLM)
        )
        cfg = cls_cfg(
            hidden_size=h,
            intermediate_size=f,
            num_hidden_layers=L,
            num_attention_heads=a,
            num_key_value_heads=sh["num_key_value_heads"],
            vocab_size=V,
            max_position_embeddings=128,
            tie_word_embeddings=False,
            attn_implementation=attn,
        )
    elif fam == "gpt2":
        cls = tf.GPT2LMHeadModel
        cfg = tf.GPT2Config(
            n_embd=h,
            n_layer=L,
            n_head=a,
            n_inner=f,
            vocab_size=V,
            n_positions=128,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
            attn_implementation=attn,
        )
    else:
        cls = tf.OPTForCausalLM
        cfg = tf.OPTConfig(
            hidden_size=h,
            num_hidden_layers=L,
            ffn_dim=f,
            num_attention_heads=a,
            vocab_size=V,
            max_position_embeddings=128,
            word_embed_proj_dim=h,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            layerdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=1,
            attn_implementation=attn,
        )
    model = cls(cfg)
    model.train()
    return model


def param_storages(model: Any) -> set[int]:
    """data_ptr of the untyped storage of every parameter."""
    return {p.untyped_storage().data_ptr() for p in model.parameters()}


def storage_bytes(tensors: Any) -> int:
    """Bytes of the distinct storages of ``tensors``."""
    seen: dict[int, int] = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def state_tensors(obj: Any, depth: int = 0) -> list[Any]:
    """Every tensor reachable from an optimizer state (dicts, lists, helper objects)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    out: list[Any] = []
    if isinstance(obj, dict):
        for v in obj.values():
            out += state_tensors(v, depth)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out += state_tensors(v, depth)
    elif hasattr(obj, "__dict__") and depth < 4 and not isinstance(obj, type):
        out += state_tensors(vars(obj), depth + 1)
    return out


@dataclass
class ActivationCount:
    """Bytes saved for backward, split the way the estimator names them."""

    activations: int  # saved by the model's forward (blocks, embeddings, final norm)
    logits: int  # model output logits + what the loss saves
    recompute_per_layer: int  # bytes packed during backward (checkpointing) / layers


def count_activations(model: Any, b: int, s: int, vocab: int, layers: int) -> ActivationCount:
    """Run forward (model), loss (HF loss function) and backward under saved-tensor hooks."""
    import torch

    torch.manual_seed(1)
    ids = torch.randint(0, vocab, (b, s))
    pstor = param_storages(model)
    fwd: dict[int, int] = {}
    loss_saved: dict[int, int] = {}
    bwd_keep: list[Any] = []
    phase = {"target": fwd}

    def pack(t: Any) -> Any:
        st = t.untyped_storage()
        k = st.data_ptr()
        if k not in pstor:
            if phase["target"] is None:
                bwd_keep.append(t)  # keep alive so addresses are not reused
            elif k not in fwd:
                phase["target"][k] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(input_ids=ids, use_cache=False)
        phase["target"] = loss_saved
        loss = model.loss_function(out.logits, ids, vocab_size=vocab)
        phase["target"] = None  # type: ignore[assignment]
        loss.backward()
    logits_st = out.logits.untyped_storage()
    logits = sum(loss_saved.values())
    if logits_st.data_ptr() not in loss_saved:
        logits += logits_st.nbytes()
    recompute = storage_bytes(bwd_keep) // layers if bwd_keep else 0
    return ActivationCount(sum(fwd.values()), logits, recompute)


def rel_err(est: float, meas: float) -> float:
    """|est - meas| / meas (0 when both are 0)."""
    if meas == 0:
        return 0.0 if est == 0 else float("inf")
    return abs(est - meas) / meas


def layer_modules(model: Any) -> list[Any]:
    """The transformer blocks of an HF causal LM (Llama/Qwen2, GPT-2, OPT)."""
    inner = getattr(model, "model", None) or getattr(model, "transformer", None)
    inner = inner or getattr(model, "gpt_neox", None) or getattr(model, "backbone", None) or model
    if hasattr(inner, "decoder"):
        inner = inner.decoder
    return list(inner.layers if hasattr(inner, "layers") else inner.h)


def count_layer_activations(model: Any, b: int, s: int, vocab: int) -> list[int]:
    """Bytes each block saves for backward (no checkpointing), attributed by module hooks."""
    import torch

    torch.manual_seed(1)
    ids = torch.randint(0, vocab, (b, s))
    pstor = param_storages(model)
    per_layer: list[dict[int, int]] = []
    current: dict[str, int | None] = {"i": None}
    handles = []
    for i, block in enumerate(layer_modules(model)):
        per_layer.append({})
        handles.append(block.register_forward_pre_hook(lambda _m, _a, i=i: current.update(i=i)))
        handles.append(block.register_forward_hook(lambda *_: current.update(i=None)))

    def pack(t: Any) -> Any:
        st = t.untyped_storage()
        i = current["i"]
        if i is not None and st.data_ptr() not in pstor:
            per_layer[i][st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, use_cache=False)
    for hd in handles:
        hd.remove()
    return [sum(d.values()) for d in per_layer]


def make_optimizer(
    opt_id: str, model: Any, shape: dict[str, Any], *, rank: int = 8, block: int = 32
) -> Any:
    """The real implementation of taxonomy optimizer ``opt_id`` for ``model``."""
    import pytorch_optimizer as po
    import torch

    params = list(model.parameters())
    lr = 1e-3
    if opt_id == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if opt_id == "sgd-momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if opt_id == "adagrad":
        return torch.optim.Adagrad(params, lr=lr)
    if opt_id == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    if opt_id == "adam":
        return torch.optim.Adam(params, lr=lr)
    if opt_id == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    if opt_id == "adafactor":
        return torch.optim.Adafactor(params, lr=lr)
    if opt_id == "lion":
        return po.Lion(params, lr=lr)
    if opt_id == "lamb":
        return po.Lamb(params, lr=lr)
    if opt_id == "lars":
        return po.LARS(params, lr=lr)
    if opt_id == "po-adafactor":
        return po.AdaFactor(params, lr=lr)
    if opt_id == "adam-mini":
        return po.AdamMini(
            model,
            lr=lr,
            num_embeds=shape["hidden_size"],
            num_heads=shape["num_attention_heads"],
            num_query_groups=shape["num_key_value_heads"],
        )
    if opt_id == "galore-adamw":
        block_names = ("embed", "lm_head", "wte", "wpe")
        named = list(model.named_parameters())
        mats = [p for n, p in named if p.dim() == 2 and not any(k in n for k in block_names)]
        ids = {id(p) for p in mats}
        rest = [p for _, p in named if id(p) not in ids]
        return po.GaLore(
            [
                {"params": rest},
                {
                    "params": mats,
                    "rank": rank,
                    "update_proj_gap": 200,
                    "scale": 0.25,
                    "projection_type": "std",
                },
            ],
            lr=lr,
        )
    if opt_id == "soap":
        return po.SOAP(params, lr=lr)
    if opt_id == "shampoo":
        return po.ScalableShampoo(
            params,
            lr=lr,
            block_size=block,
            start_preconditioning_step=1,
            preconditioning_compute_steps=1,
        )
    raise KeyError(opt_id)


def count_optimizer_state(
    opt_id: str, model: Any, shape: dict[str, Any], steps: int = 2, **kw: Any
) -> int:
    """Bytes of distinct tensors in ``optimizer.state`` after ``steps`` real steps."""
    import torch

    opt = make_optimizer(opt_id, model, shape, **kw)
    torch.manual_seed(2)
    ids = torch.randint(0, shape["vocab_size"], (1, 8))
    for _ in range(steps):
        opt.zero_grad()
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        opt.step()
    pstor = param_storages(model)
    tensors = [
        t for t in state_tensors(dict(opt.state)) if t.untyped_storage().data_ptr() not in pstor
    ]
    return storage_bytes(tensors)
