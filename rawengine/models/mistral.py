"""Mistral: the Llama forward pass; its only difference, the sliding window, is enforced
by capping the context at the window (see models.load_model)."""

from .llama import LlamaModel


class MistralModel(LlamaModel):
    pass
