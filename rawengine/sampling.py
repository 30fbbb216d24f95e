"""Sampling parameters and the reference (NumPy) sampler.

Order of operations, the same on every backend (HF / vLLM conventions):
  1. repetition penalty on tokens seen in prompt or output:  l > 0 ? l / r : l * r
  2. greedy (temperature == 0) -> argmax, done
  3. l = l / temperature
  4. top-k: keep the k largest (k <= 0 disables)
  5. top-p: keep the smallest prefix of the sorted distribution with mass >= p
  6. min-p: drop tokens with prob < min_p * max_prob
  7. draw from the renormalised distribution
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .errors import RawEngineError


@dataclasses.dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = dataclasses.field(default_factory=list)
    ignore_eos: bool = False

    def __post_init__(self):
        self.stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        self.validate()

    def validate(self) -> None:
        def bad(msg):
            raise RawEngineError(f"invalid sampling parameter: {msg}")

        if not isinstance(self.max_tokens, int) or self.max_tokens < 0:
            bad(f"max_tokens must be a non-negative integer, got {self.max_tokens!r}")
        for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(f"{name} must be a finite number, got {v!r}")
        if self.temperature < 0:
            bad(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            bad(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            bad(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            bad(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            bad(f"top_k must be a non-negative integer, got {self.top_k!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            bad(f"seed must be an integer, got {self.seed!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            bad("stop strings must be non-empty strings")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """logits [V] float32, seen: token ids already in prompt/output."""
    if penalty == 1.0 or len(seen) == 0:
        return logits
    logits = logits.copy()
    ids = np.unique(seen)
    l = logits[ids]
    logits[ids] = np.where(l > 0, l / penalty, l * penalty)
    return logits


def filtered_probs(logits: np.ndarray, p: SamplingParams) -> np.ndarray:
    """Probabilities after temperature, top-k, top-p and min-p (float64, sums to 1)."""
    l = logits.astype(np.float64) / p.temperature
    if p.top_k > 0 and p.top_k < l.size:
        kth = np.partition(l, -p.top_k)[-p.top_k]
        l = np.where(l < kth, -np.inf, l)
    probs = np.exp(l - l.max())
    probs /= probs.sum()
    if p.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[order])
        # keep token i if the mass before it is < top_p (always keeps the first)
        keep = np.zeros_like(probs, dtype=bool)
        keep[order] = (cum - probs[order]) < p.top_p
        probs = np.where(keep, probs, 0.0)
    if p.min_p > 0.0:
        probs = np.where(probs < p.min_p * probs.max(), 0.0, probs)
    return probs / probs.sum()


def sample(logits: np.ndarray, p: SamplingParams, seen: np.ndarray,
           rng: np.random.Generator) -> int:
    """One token id from logits [V] (any float dtype)."""
    logits = apply_repetition_penalty(np.asarray(logits, np.float32), seen,
                                      p.repetition_penalty)
    if p.is_greedy:
        return int(np.argmax(logits))
    probs = filtered_probs(logits, p)
    return int(rng.choice(probs.size, p=probs))
