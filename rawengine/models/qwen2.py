"""Qwen2 / Qwen2.5: the Llama forward pass with biases on the q/k/v projections
(config.attention_bias is forced on for model_type qwen2)."""

from .llama import LlamaModel


class Qwen2Model(LlamaModel):
    pass
