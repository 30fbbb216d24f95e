"""Model configuration read from a checkpoint's config.json (unknown keys are dropped)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .errors import RawEngineError


@dataclasses.dataclass
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v projections carry a bias (qwen2: always)
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    torch_dtype: str = "float32"

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        if "model_type" not in d:
            raise RawEngineError("config.json has no model_type")
        try:
            d.setdefault("num_key_value_heads", d["num_attention_heads"])
            d.setdefault("head_dim", None)
            if d["head_dim"] is None:
                d["head_dim"] = d["hidden_size"] // d["num_attention_heads"]
        except KeyError as e:
            raise RawEngineError(f"config.json is missing {e.args[0]}") from None
        # transformers 5 moved rope settings into rope_parameters
        rp = d.get("rope_parameters")
        if isinstance(rp, dict):
            d.setdefault("rope_theta", rp.get("rope_theta", 10000.0))
            if rp.get("rope_type", rp.get("type", "default")) != "default":
                d["rope_scaling"] = rp
        if d.get("rope_theta") is None:
            d["rope_theta"] = 10000.0
        if d["model_type"] == "qwen2":
            d["attention_bias"] = True
            if not d.get("use_sliding_window", False):
                d["sliding_window"] = None
        if "dtype" in d and "torch_dtype" not in d:
            d["torch_dtype"] = d["dtype"]
        if d.get("torch_dtype") is None:
            d["torch_dtype"] = "float32"
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_dir(cls, path: str | Path) -> "ModelConfig":
        f = Path(path) / "config.json"
        if not f.is_file():
            raise RawEngineError(f"{path} is not a model directory: no config.json")
        try:
            d = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise RawEngineError(f"{f} is not valid JSON: {e}") from None
        return cls.from_dict(d)
