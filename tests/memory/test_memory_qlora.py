"""QLoRA as users run it, measured on the CPU: bitsandbytes' 4-bit layers under PEFT's LoRA.

Two set-ups, loaded through transformers' ``BitsAndBytesConfig`` (NF4, double quantization,
bf16 compute) from a tiny saved Llama, nothing downloaded:

- ``bf16``: everything 16-bit, adapters in bf16 (PEFT ``autocast_adapter_dtype=False``; what
  torchtune's QLoRA recipes keep), no autocast: the model's ``--precision bf16``;
- ``amp``: Hugging Face Trainer's way: ``prepare_model_for_kbit_training`` (every parameter
  that is not 4-bit cast to fp32), fp32 adapters (PEFT's default), bf16 autocast: the
  model's ``--precision amp-bf16``.

What they show: bitsandbytes' ``MatMul4Bit`` keeps no input (0.43.2 and later); adapters
keep their input (one shared copy, or one autocast cast per adapter from an fp32 stream);
frozen RMSNorm weights do not keep the normalized tensor; 4-bit layers return their input's
dtype, so under ``amp`` the MLP's intermediates are fp32; and the backward dequantizes each
4-bit weight whole.
"""

from __future__ import annotations

import gc
import tempfile
from typing import Any

import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")
bnb = pytest.importorskip("bitsandbytes")
peft = pytest.importorskip("peft")

from advisor.config import Attention, Precision, Task, TrainingConfig  # noqa: E402
from advisor.memory import (  # noqa: E402
    DeviceOverheads,
    estimate_memory,
    layer_activation_bytes,
    lora_tensors,
)
from advisor.rules.taxonomy import load_taxonomy  # noqa: E402
from tests.livemem import LiveBytes  # noqa: E402
from tests.memhelpers import SHAPES, build_model, layer_modules, spec_for  # noqa: E402

TAX = load_taxonomy()
TARGETS = {
    "attention": (["q_proj", "k_proj", "v_proj", "o_proj"], ("k", "o", "q", "v")),
    "all-linear": ("all-linear", ("down", "gate", "k", "o", "q", "up", "v")),
}
RANK = 8


@pytest.fixture(scope="module")
def saved_llama() -> str:
    folder = tempfile.mkdtemp()
    build_model("llama", "sdpa").save_pretrained(folder)
    return folder


def _qlora(folder: str, mode: str, targets: Any, dropout: float = 0.0) -> Any:
    quant = tf.BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_quant_type="nf4",
    )
    model = tf.AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=quant, device_map="cpu", dtype=torch.bfloat16
    )
    amp = mode == "amp"
    if amp:
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = peft.LoraConfig(
        r=RANK,
        lora_alpha=16,
        target_modules=targets,
        lora_dropout=dropout,
        task_type="CAUSAL_LM",
    )
    model = peft.get_peft_model(model, lora, autocast_adapter_dtype=amp)
    # As the Trainer does for adapters under checkpointing (and prepare_model_for_kbit_training
    # with it): the embedding output needs a gradient, so the first block keeps what the
    # others keep (otherwise its frozen input saves nothing, a tiny model's half).
    model.enable_input_require_grads()
    model.train()
    return model


def _config(
    mode: str, names: tuple[str, ...], b: int, s: int, dropout: float = 0.0
) -> TrainingConfig:
    return TrainingConfig(
        lora_dropout=dropout,
        task=Task.QLORA,
        precision=Precision.AMP_BF16 if mode == "amp" else Precision.BF16,
        attention=Attention.FLASH,
        micro_batch=b,
        seq_len=s,
        lora_rank=RANK,
        lora_targets=names,
    )


@pytest.mark.parametrize("dropout", [0.0, 0.05])
@pytest.mark.parametrize("targets", sorted(TARGETS))
@pytest.mark.parametrize("mode", ["bf16", "amp"])
def test_a_qlora_block_saves_what_the_model_counts(
    saved_llama: str, mode: str, targets: str, dropout: float
) -> None:
    """The second block's saved tensors (the first one's input needs no gradient) equal the
    model's block count, plus what the model counts elsewhere: the RoPE tables (once, at
    model level) and, under autocast, the adapters' bf16 weight casts (weight_cache).
    With LoRA dropout each adapter keeps its own dropped-out input and its mask (the CPU's
    mask is in the input's dtype; CUDA's is bool: DeviceOverheads.dropout_mask_bytes)."""
    peft_targets, names = TARGETS[targets]
    model = _qlora(saved_llama, mode, peft_targets, dropout)
    blocks = layer_modules(model.base_model.model)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}
    current: dict[str, int | None] = {"i": None}
    blocks[1].register_forward_pre_hook(lambda *_: current.update(i=1))
    blocks[1].register_forward_hook(lambda *_: current.update(i=None))

    def pack(t: Any) -> Any:
        st = t.untyped_storage()
        if current["i"] is not None and st.data_ptr() not in params:
            saved[st.data_ptr()] = st.nbytes()
        return t

    sh = SHAPES["llama"]
    b, s = 3, 32  # 96 rows: no activation has a weight's shape
    ids = torch.randint(0, sh["vocab_size"], (b, s))
    amp = mode == "amp"
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp),
    ):
        model(input_ids=ids, use_cache=False)
    spec = spec_for("llama")
    config = _config(mode, names, b, s)
    block = layer_activation_bytes(
        spec,
        b,
        s,
        Attention.FLASH,
        config.precision,
        lora_targets=frozenset(names),
        lora_rank=RANK,
        quantized=True,
        lora_dropout=dropout > 0,
        mask_bytes=None,
    )
    residual = 4 if amp else 2
    rope = 2 * s * (sh["hidden_size"] // sh["num_attention_heads"]) * residual
    adapters = sum(t.numel * t.count for t in lora_tensors(spec, RANK, frozenset(names)))
    casts = 2 * adapters // sh["num_layers"] if amp else 0
    assert sum(saved.values()) == block + rope + casts


@pytest.mark.parametrize(
    ("mode", "targets", "dropout"),
    [
        ("bf16", "attention", 0.0),
        ("bf16", "all-linear", 0.0),
        ("amp", "attention", 0.0),
        ("amp", "all-linear", 0.0),
        ("bf16", "all-linear", 0.1),
        ("amp", "all-linear", 0.1),
    ],
)
def test_a_qlora_steps_peak(saved_llama: str, mode: str, targets: str, dropout: float) -> None:
    """A whole step (forward, HF loss, backward, AdamW) of the quantized model, every storage
    counted while alive: the estimate's peak phase is within 3% of it (measured: 0.4-2.2%
    under, the first block's input made to need a gradient as the Trainer does)."""
    peft_targets, names = TARGETS[targets]
    b, s = 4, 64
    amp = mode == "amp"
    with LiveBytes() as live:
        model = _qlora(saved_llama, mode, peft_targets, dropout)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        ids = torch.randint(0, SHAPES["llama"]["vocab_size"], (b, s))
        for _ in range(2):  # the first step allocates the states
            gc.collect()
            live.reset_peak()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                out = model(input_ids=ids, use_cache=False)
            loss = model.base_model.model.loss_function(out.logits, ids, vocab_size=256)
            del out
            loss.backward()
            del loss
            opt.step()
            opt.zero_grad(set_to_none=True)
        peak = live.peak
    est = estimate_memory(
        spec_for("llama"),
        _config(mode, names, b, s, dropout),
        optimizer=TAX.get("adamw"),
        device=DeviceOverheads.cpu(),
    )
    assert est.total_bytes == pytest.approx(peak, rel=0.03), (est.total_bytes, peak)


def test_the_4bit_matmul_keeps_no_input_and_dequantizes_its_weight_in_backward() -> None:
    """bitsandbytes' MatMul4Bit saves nothing through autograd and keeps only the packed
    weight on its context; its backward dequantizes the whole weight in the compute dtype
    for the input gradient: the transient the model adds to a QLoRA backward."""
    out_f, in_f, rows = 2048, 1024, 512
    layer = bnb.nn.Linear4bit(
        in_f,
        out_f,
        bias=False,
        compute_dtype=torch.bfloat16,
        compress_statistics=True,
        quant_type="nf4",
    )
    weight = torch.randn(out_f, in_f, dtype=torch.bfloat16)
    layer.weight = bnb.nn.Params4bit(
        weight, requires_grad=False, quant_type="nf4", compress_statistics=True
    )
    layer = layer.to("cpu")
    x = torch.randn(rows, in_f, dtype=torch.bfloat16, requires_grad=True)
    saved: list[Any] = []
    with (
        LiveBytes() as live,
        torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t),
    ):
        y = layer(x)
        assert y.grad_fn.tensors[0] is None  # MatMul4Bit's ctx.tensors = (None, B)
        grad = torch.ones_like(y)
        live.reset_peak()
        before = live.current
        y.backward(grad)
        extra = live.peak - before
    assert saved == []
    n = out_f * in_f
    dequantized = extra - rows * in_f * 2  # less the input gradient
    assert dequantized == 2 * n
    # The model's QLoRA transient for a block whose largest matrix is this one: the whole
    # weight in bf16, plus the fp32 block scales CUDA's forward fallback rebuilds (n/64 x 8).
    spec = spec_for("llama", hidden_size=in_f, intermediate_size=out_f, num_attention_heads=8)
    config = TrainingConfig(
        task=Task.QLORA, precision=Precision.BF16, micro_batch=1, seq_len=8, lora_rank=RANK
    )
    est = estimate_memory(spec, config, optimizer=TAX.get("adamw"), device=DeviceOverheads.cpu())
    plain = estimate_memory(
        spec,
        config.with_(task=Task.LORA),
        optimizer=TAX.get("adamw"),
        device=DeviceOverheads.cpu(),
    )
    added = (
        est.phase("layer_backward").components["transient"]
        - (plain.phase("layer_backward").components["transient"])
    )
    assert dequantized <= added <= dequantized + 8 * n // 64
