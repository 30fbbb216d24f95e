"""Sampling parameters and the reference sampler."""

import numpy as np
import pytest

from rawengine.errors import RawEngineError
from rawengine.sampling import SamplingParams, apply_repetition_penalty, filtered_probs, sample


@pytest.mark.parametrize("kw", [dict(max_tokens=-1), dict(top_p=0.0), dict(top_p=1.5),
                                dict(temperature=float("nan")), dict(temperature=-1.0),
                                dict(min_p=2.0), dict(repetition_penalty=0.0), dict(top_k=-2),
                                dict(stop=[""]), dict(seed="x")])
def test_invalid_params_raise_clear_error(kw):
    with pytest.raises(RawEngineError, match="invalid sampling parameter"):
        SamplingParams(**kw)


def test_greedy_is_argmax_and_ignores_rng():
    logits = np.array([0.1, 3.0, 2.9, -1.0], np.float32)
    p = SamplingParams(temperature=0.0)
    assert all(sample(logits, p, np.array([], int), np.random.default_rng(s)) == 1
               for s in range(5))


def test_repetition_penalty_follows_hf_sign_rule():
    out = apply_repetition_penalty(np.array([2.0, -2.0, 1.0], np.float32), np.array([0, 1]), 2.0)
    np.testing.assert_allclose(out, [1.0, -4.0, 1.0])


def test_top_k_top_p_min_p_filter():
    logits = np.log(np.array([0.5, 0.25, 0.15, 0.1]))
    assert (filtered_probs(logits, SamplingParams(top_k=2)) > 0).sum() == 2
    # top_p 0.7: 0.5 + 0.25 reaches it; the third token is dropped
    assert (filtered_probs(logits, SamplingParams(top_p=0.7)) > 0).tolist() == [1, 1, 0, 0]
    # min_p 0.4: keep probs >= 0.2
    assert (filtered_probs(logits, SamplingParams(min_p=0.4)) > 0).tolist() == [1, 1, 0, 0]


def test_seeded_sampling_is_reproducible_and_follows_distribution():
    logits = np.log(np.array([0.6, 0.3, 0.1]))
    p = SamplingParams(temperature=1.0, seed=7)
    draw = lambda: [sample(logits, p, np.array([], int), np.random.default_rng(7))  # noqa: E731
                    for _ in range(3)]
    assert draw() == draw()
    rng = np.random.default_rng(0)
    counts = np.bincount([sample(logits, p, np.array([], int), rng) for _ in range(4000)],
                         minlength=3) / 4000
    np.testing.assert_allclose(counts, [0.6, 0.3, 0.1], atol=0.03)
