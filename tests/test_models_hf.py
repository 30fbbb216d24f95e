"""The NumPy backend against HF transformers' logits (fixtures made by tools/make_fixtures.py).

Every fixture is pushed through the same checks: full-prompt logits at every position,
chunked prefill + token-by-token decode through the paged cache (page sizes 1 and 16),
and greedy generation."""

from pathlib import Path

import numpy as np
import pytest

from rawengine.engine import Engine, Sequence
from rawengine.sampling import SamplingParams

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = ["tiny_llama", "tiny_llama3", "tiny_qwen2", "tiny_mistral", "tiny_llama_bf16",
         "tiny_llama_sharded"]
RTOL = 1e-4  # fp32 vs fp32: max |diff| relative to the logits' max magnitude


def reference(name):
    ref = np.load(FIXTURES / name / "reference.npz")
    n = len([k for k in ref.files if k.startswith("input_ids_")])
    return [(ref[f"input_ids_{i}"].astype(int).tolist(), ref[f"logits_{i}"], ref[f"greedy_{i}"])
            for i in range(n)]


def all_position_logits(engine: Engine, ids: list[int]) -> np.ndarray:
    """One prefill step whose LM head reads every position."""
    seq = Sequence(list(ids), SamplingParams(), num_prompt=len(ids))
    tokens, arrays = engine.plan([seq], [len(ids)])
    arrays["logits_indices"] = np.arange(len(ids), dtype=np.int32)
    meta = engine.to_meta(arrays, len(ids), len(ids))
    out = engine.model.forward(engine.backend.asarray(tokens, dtype="int32"), meta,
                               engine.kv.layers)
    engine.kv.release(seq.block_table)
    return engine.backend.to_numpy(out)


def assert_close(got, want):
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= RTOL, f"relative error {err:.2e}"


@pytest.mark.parametrize("name", NAMES)
def test_prefill_logits_match_hf(name):
    engine = Engine(FIXTURES / name, device="cpu", max_model_len=256, max_num_seqs=2)
    for ids, logits, _ in reference(name):
        assert_close(all_position_logits(engine, ids), logits)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_llama3", "tiny_qwen2"])
@pytest.mark.parametrize("block_size", [1, 16])
def test_chunked_prefill_then_decode_match_hf(name, block_size):
    """Prefill the first half in chunks of 5, then feed the rest one token at a time:
    each step's last-token logits must equal HF's at that position."""
    engine = Engine(FIXTURES / name, device="cpu", max_model_len=256, max_num_seqs=2,
                    block_size=block_size, prefill_chunk=5)
    ids, logits, _ = reference(name)[-1]
    half = len(ids) // 2
    seq = Sequence(ids[:half], SamplingParams())
    assert_close(engine.backend.to_numpy(engine.prefill(seq))[0], logits[half - 1])
    for p in range(half, len(ids)):
        seq.token_ids.append(ids[p])
        got = engine.backend.to_numpy(engine.forward([seq], [1]))[0]
        assert_close(got, logits[p])


@pytest.mark.parametrize("name", NAMES)
def test_greedy_generation_matches_hf(name):
    engine = Engine(FIXTURES / name, device="cpu", max_model_len=256, max_num_seqs=4)
    refs = reference(name)
    prompts = [ids for ids, _, _ in refs]
    params = [SamplingParams(max_tokens=len(g), temperature=0.0) for _, _, g in refs]
    out = {}
    for seq in engine.generate(prompts, params):  # batched decode, ragged lengths
        out[seq.index] = seq.output_ids
    for i, (_, _, greedy) in enumerate(refs):
        assert out[i] == greedy.tolist()
    assert engine.kv.allocator.num_free == engine.kv.num_blocks - 1  # only scratch held
