"""Llama family (Llama 2/3/3.1/3.2, SmolLM2, TinyLlama): the forward pass, written once
against the backend op interface. Mistral and Qwen2 reuse it (see mistral.py, qwen2.py)."""

from __future__ import annotations

from ..backends.base import Backend, StepMeta
from ..config import ModelConfig
from ..rope import cos_sin_tables

# Our fused weights -> the HF tensors concatenated along rows to build them.
LAYER_WEIGHTS = {
    "input_norm": ["input_layernorm.weight"],
    "qkv": ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"],
    "o": ["self_attn.o_proj.weight"],
    "post_norm": ["post_attention_layernorm.weight"],
    "gate_up": ["mlp.gate_proj.weight", "mlp.up_proj.weight"],
    "down": ["mlp.down_proj.weight"],
}
BIAS_WEIGHTS = {
    "qkv_bias": ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"],
}
GLOBAL_WEIGHTS = {
    "embed": ["model.embed_tokens.weight"],
    "norm": ["model.norm.weight"],
    "lm_head": ["lm_head.weight"],
}


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple]:
    """Every HF tensor name this config needs, with its shape."""
    h, d = cfg.hidden_size, cfg.head_dim
    q, kv, i = cfg.q_size, cfg.kv_size, cfg.intermediate_size
    layer = {
        "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h), "self_attn.o_proj.weight": (h, q),
        "mlp.gate_proj.weight": (i, h), "mlp.up_proj.weight": (i, h),
        "mlp.down_proj.weight": (h, i),
    }
    if cfg.attention_bias:
        layer |= {"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,),
                  "self_attn.v_proj.bias": (kv,)}
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, h)
    for n in range(cfg.num_hidden_layers):
        shapes |= {f"model.layers.{n}.{k}": v for k, v in layer.items()}
    assert d * cfg.num_attention_heads == q
    return shapes


class LlamaModel:
    """forward: embedding -> [(+residual) rmsnorm+qkv+rope+kv_write -> attention -> o_proj
    -> (+residual) rmsnorm+gate_up+silu_mul+down] x L -> rmsnorm -> lm_head.
    On the CUDA backend at decode sizes norm_linear_rope is one kernel (rmsnorm + one GEMV with
    RoPE in its output at large sizes), attention_o and norm_mlp one kernel each for small
    models (attention_o at short contexts), else two.
    A backend may run a whole decode step as one launch (Backend.decode_step; the CUDA backend
    does for small models at batch 1, kernels_cu/decode_step.cu)."""

    def __init__(self, cfg: ModelConfig, backend: Backend, weights: dict, max_positions: int):
        self.cfg, self.b = cfg, backend
        self.layers = weights["layers"]
        self.embed, self.norm = weights["embed"], weights["norm"]
        self.lm_head = weights.get("lm_head", self.embed)  # tied embeddings share the table
        cos, sin = cos_sin_tables(cfg, max_positions)
        self.cos, self.sin = backend.asarray(cos, dtype="float32"), backend.asarray(sin, dtype="float32")
        self.scale = cfg.head_dim ** -0.5

    def forward(self, ids, meta: StepMeta, kv_caches: list) -> object:
        """ids [T] int32 -> logits [B, V] for the last token of each sequence."""
        b, c = self.b, self.cfg
        if meta.is_decode:  # small models at batch 1: the whole step in one kernel (CUDA)
            logits = b.decode_step(self, ids, meta, kv_caches)
            if logits is not None:
                return logits
        x = b.embedding(ids, self.embed)
        residual = None
        for w, (k_cache, v_cache) in zip(self.layers, kv_caches):
            # layer 0: residual None, so the residual stream starts as the embedding
            # rmsnorm + qkv + rope + kv_write (one kernel at decode on the CUDA backend)
            q, residual = b.norm_linear_rope(x, residual, w["input_norm"], c.rms_norm_eps,
                                             w["qkv"], w.get("qkv_bias"), meta, self.cos,
                                             self.sin, k_cache, v_cache, c.num_attention_heads,
                                             c.num_key_value_heads, c.head_dim)
            # attention + o_proj (one kernel at decode on the CUDA backend for small models at
            # short contexts, else two)
            x = b.attention_o(q, k_cache, v_cache, meta, self.scale, w["o"])
            # rmsnorm + gate_up + silu_mul + down (one kernel at decode on the CUDA backend
            # for small models, else two)
            x, residual = b.norm_mlp(x, residual, w["post_norm"], c.rms_norm_eps, w["gate_up"],
                                     w["down"])
        if meta.is_decode:  # every row is its sequence's last token: no gather needed
            h, _ = b.rmsnorm(x, self.norm, c.rms_norm_eps, residual)
        else:
            last = b.gather_rows(b.add(x, residual), meta.logits_indices)
            h = b.rmsnorm(last, self.norm, c.rms_norm_eps)
        return b.linear(h, self.lm_head)
