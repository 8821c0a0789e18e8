"""BERT-style fine-tuning and the models' own dropout, measured on the CPU.

A tiny ``BertForSequenceClassification`` (post-LN encoder, pooler, two-label classifier)
and a tiny GPT-2 with their published dropout (0.1) on, counted with saved-tensor hooks:
every block's saved bytes against the model's block count, the whole forward (blocks,
embeddings, head and loss) against the estimate's activations and logits, and the
parameters against the estimate's. The CPU's dropout keeps its mask in the dropped
tensor's dtype (``DeviceOverheads.cpu()`` says so; CUDA's mask is a bool).
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

from advisor.config import Attention, Precision, Task, TrainingConfig  # noqa: E402
from advisor.memory import DeviceOverheads, estimate_memory, layer_activation_bytes  # noqa: E402
from advisor.rules.taxonomy import load_taxonomy  # noqa: E402
from tests.memhelpers import SHAPES, build_model, make_spec, spec_for  # noqa: E402

TAX = load_taxonomy()
H, A, F, V, L = 64, 4, 256, 200, 2
B, S = 3, 32


def _bert_spec() -> Any:
    return make_spec(
        id="tiny-bert",
        name="tiny bert",
        family="bert",
        arch="encoder",
        hidden_size=H,
        num_layers=L,
        num_attention_heads=A,
        num_key_value_heads=A,
        head_dim=H // A,
        intermediate_size=F,
        vocab_size=V,
        max_position_embeddings=128,
        mlp="gelu",
        norm="layernorm",
        position="learned",
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        tie_word_embeddings=True,
        type_vocab_size=2,
        pooler=True,
        source="synthetic:tiny BertConfig",
    )


def _count(model: Any, blocks: list[Any], run: Any) -> tuple[list[int], int]:
    """(saved bytes of each block, saved bytes of the whole forward and loss)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    per: list[dict[int, int]] = [{} for _ in blocks]
    every: dict[int, int] = {}
    current: dict[str, int | None] = {"i": None}
    for i, block in enumerate(blocks):
        block.register_forward_pre_hook(lambda *_, i=i: current.update(i=i))
        block.register_forward_hook(lambda *_: current.update(i=None))

    def pack(t: Any) -> Any:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            every[st.data_ptr()] = st.nbytes()
            if current["i"] is not None:
                per[current["i"]][st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return [sum(d.values()) for d in per], sum(every.values())


# NOTE: no SDPA with dropout: the CPU's SDPA falls back to the math kernel under dropout
# (keeping masks), where CUDA's flash and memory-efficient kernels keep an RNG state.
@pytest.mark.parametrize(("dropout", "attn"), [(0.0, "eager"), (0.0, "sdpa"), (0.1, "eager")])
def test_bert_sequence_classification_saves_what_the_model_counts(
    dropout: float, attn: str
) -> None:
    cfg = tf.BertConfig(
        hidden_size=H,
        num_attention_heads=A,
        intermediate_size=F,
        vocab_size=V,
        num_hidden_layers=L,
        max_position_embeddings=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        attn_implementation=attn,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = tf.BertForSequenceClassification(cfg)
    model.train()
    ids = torch.randint(0, V, (B, S))
    labels = torch.randint(0, 2, (B,))
    blocks, whole = _count(
        model, list(model.bert.encoder.layer), lambda: model(input_ids=ids, labels=labels)
    )
    spec = _bert_spec()
    attention = Attention.EAGER if attn == "eager" else Attention.FLASH
    config = TrainingConfig(
        task=Task.FINETUNE,
        precision=Precision.FP32,
        attention=attention,
        micro_batch=B,
        seq_len=S,
        dropout=dropout > 0,
    )
    per_block = layer_activation_bytes(
        spec, B, S, attention, Precision.FP32, dropout=dropout > 0, mask_bytes=None
    )
    assert blocks == [per_block] * L
    est = estimate_memory(spec, config, optimizer=TAX.get("adamw"), device=DeviceOverheads.cpu())
    assert est.parameters == sum(p.numel() for p in model.parameters())
    # Blocks, embeddings, pooler, classifier and loss: no vocabulary logits. The pooler's
    # dropout mask and the token-type ids are the few KiB left out.
    predicted = est.breakdown["activations"] + est.breakdown["logits"]
    assert predicted == pytest.approx(whole, rel=0.005), (predicted, whole)


def test_gpt2_dropout_keeps_masks_and_the_dropped_probabilities() -> None:
    """GPT-2's published dropout (resid, attention, embedding: 0.1) under eager attention:
    the same terms as BERT's, on a pre-norm decoder."""
    sh = SHAPES["gpt2"]
    model = build_model("gpt2", "eager")
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.1
    model.config.attn_pdrop = 0.1
    for block in model.transformer.h:
        block.attn.attn_dropout.p = 0.1
    ids = torch.randint(0, sh["vocab_size"], (sh["b"], sh["s"]))
    blocks, _ = _count(
        model, list(model.transformer.h), lambda: model(input_ids=ids, use_cache=False)
    )
    per_block = layer_activation_bytes(
        spec_for("gpt2"),
        sh["b"],
        sh["s"],
        Attention.EAGER,
        Precision.FP32,
        dropout=True,
        mask_bytes=None,
    )
    assert blocks == [per_block] * sh["num_layers"]


def test_under_autocast_dropout_adds_only_its_masks_to_the_attention() -> None:
    """Under bf16 autocast the fp32 softmax's dropped copy is cast for the value matmul
    (the cast is what it keeps): dropout adds the masks alone, as the model says. Measured
    as the difference a BERT block's saved bytes make with and without dropout."""

    def saved(dropout: float) -> int:
        cfg = tf.BertConfig(
            hidden_size=H,
            num_attention_heads=A,
            intermediate_size=F,
            vocab_size=V,
            num_hidden_layers=L,
            max_position_embeddings=128,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            attn_implementation="eager",
            num_labels=2,
        )
        torch.manual_seed(0)
        model = tf.BertForSequenceClassification(cfg)
        model.train()
        ids = torch.randint(0, V, (B, S))

        def run() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model(input_ids=ids, labels=torch.randint(0, 2, (B,)))

        blocks, _ = _count(model, list(model.bert.encoder.layer), run)
        return blocks[-1]

    def model(dropout: bool) -> int:
        return layer_activation_bytes(
            _bert_spec(),
            B,
            S,
            Attention.EAGER,
            Precision.AMP_BF16,
            dropout=dropout,
            mask_bytes=None,
        )

    assert saved(0.1) - saved(0.0) == model(True) - model(False)
