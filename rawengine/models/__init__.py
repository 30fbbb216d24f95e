"""Model registry keyed by HF model_type, and the one weight loader."""

from __future__ import annotations

import numpy as np

from ..backends.base import Backend
from ..checkpoint import Checkpoint, check_shapes, to_float32
from ..config import ModelConfig
from ..errors import RawEngineError
from .llama import BIAS_WEIGHTS, GLOBAL_WEIGHTS, LAYER_WEIGHTS, LlamaModel, hf_shapes
from .mistral import MistralModel
from .qwen2 import Qwen2Model

MODELS = {"llama": LlamaModel, "mistral": MistralModel, "qwen2": Qwen2Model}

# Tensors some checkpoints carry that no supported model reads.
IGNORED = ("rotary_emb.inv_freq",)


def model_class(cfg: ModelConfig):
    if cfg.model_type not in MODELS:
        raise RawEngineError(f"unsupported model_type {cfg.model_type!r}; supported: "
                             + ", ".join(sorted(MODELS)))
    return MODELS[cfg.model_type]


def _fused(ckpt: Checkpoint, names: list[str], backend: Backend):
    parts = [ckpt.get(n) for n in names]
    dtypes = {ckpt.dtype(n) for n in names}
    if len(dtypes) > 1:  # mixed storage: widen every piece to float32 first
        parts = [to_float32(p, ckpt.dtype(n)) for p, n in zip(parts, names)]
        src = "F32"
    else:
        src = dtypes.pop()
    host = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return backend.asarray(host, src_dtype=src)


def load_weights(ckpt: Checkpoint, cfg: ModelConfig, backend: Backend) -> dict:
    have = ckpt.shapes()
    per_layer = dict(LAYER_WEIGHTS, **(BIAS_WEIGHTS if cfg.attention_bias else {}))
    layers = []
    for n in range(cfg.num_hidden_layers):
        pre = f"model.layers.{n}."
        layers.append({k: _fused(ckpt, [pre + s for s in v], backend) for k, v in per_layer.items()})
    out = {"layers": layers}
    for k, v in GLOBAL_WEIGHTS.items():
        if k == "lm_head" and (cfg.tie_word_embeddings or v[0] not in have):
            continue
        out[k] = _fused(ckpt, v, backend)
    return out


def random_weights(cfg: ModelConfig, backend: Backend, seed: int = 0) -> dict:
    """Weights of the right fused shapes drawn on the backend's device (benchmarks).
    Scales keep activations O(1) through the layers; norms are 1."""
    hf = hf_shapes(cfg)
    hf.setdefault("lm_head.weight", (cfg.vocab_size, cfg.hidden_size))

    def make(names):
        rows = sum(hf[n][0] for n in names)
        shape = (rows,) + tuple(hf[names[0]][1:])
        if len(shape) == 1:
            return backend.randn(shape, 0.0, seed, offset=1.0)
        return backend.randn(shape, shape[1] ** -0.5, seed)

    per_layer = dict(LAYER_WEIGHTS, **(BIAS_WEIGHTS if cfg.attention_bias else {}))
    layers = [{k: make([f"model.layers.{n}.{s}" for s in v]) for k, v in per_layer.items()}
              for n in range(cfg.num_hidden_layers)]
    out = {"layers": layers, "embed": backend.randn((cfg.vocab_size, cfg.hidden_size), 1.0, seed),
           "norm": make(GLOBAL_WEIGHTS["norm"])}
    if not cfg.tie_word_embeddings:
        out["lm_head"] = make(GLOBAL_WEIGHTS["lm_head"])
    return out


def load_model(path, backend: Backend, max_positions: int | None = None):
    """Read config.json, check every tensor name and shape, then upload the weights.
    path may be a ModelConfig instead: the model then gets random weights (benchmarks)."""
    if isinstance(path, ModelConfig):
        cfg = path
        return model_class(cfg)(cfg, backend, random_weights(cfg, backend),
                                max_positions or cfg.max_position_embeddings)
    cfg = ModelConfig.from_dir(path)
    cls = model_class(cfg)
    ckpt = Checkpoint(path)
    expected = hf_shapes(cfg)
    # a tied checkpoint may still store lm_head.weight; an untied one must
    optional = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    if cfg.tie_word_embeddings:
        expected["lm_head.weight"] = (cfg.vocab_size, cfg.hidden_size)
    check_shapes(ckpt, expected, optional, IGNORED)
    max_positions = max_positions or cfg.max_position_embeddings
    return cls(cfg, backend, load_weights(ckpt, cfg, backend), max_positions)
