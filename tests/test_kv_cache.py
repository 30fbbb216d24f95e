"""Block tables: position order for prefill and slots, visit order for decode attention."""

import numpy as np
import pytest
from test_models_hf import FIXTURES, assert_close, reference

from rawengine.engine import Engine, Sequence
from rawengine.kv_cache import BlockAllocator, BlockTable, visit_order
from rawengine.sampling import SamplingParams


def test_visit_order_sorts_all_but_the_newest_block():
    assert visit_order([]) == []
    assert visit_order([5]) == [5]
    assert visit_order([9, 3, 7, 1]) == [3, 7, 9, 1]
    assert visit_order([2, 8, 4, 9]) == [2, 4, 8, 9]


@pytest.mark.parametrize("seed", range(5))
def test_block_table_keeps_visit_order_as_it_grows(seed):
    rng = np.random.default_rng(seed)
    alloc = BlockAllocator(400)
    rng.shuffle(alloc.free_blocks)
    t = BlockTable()
    while alloc.num_free:
        t.extend(alloc.allocate(min(alloc.num_free, int(rng.choice([1, 1, 1, 3, 17])))))
        assert t.visit == visit_order(t.blocks)
        assert list(t) == t.blocks and len(t) == len(t.blocks)
    t.extend([])
    assert t.visit == visit_order(t.blocks)
    t.clear()
    assert not t and t.visit == []


def fragment(engine, seed=0):
    """Shuffle the pool's free list: a long-running engine's blocks come out of order."""
    np.random.default_rng(seed).shuffle(engine.kv.allocator.free_blocks)


@pytest.mark.parametrize("block_size", [1, 4])
def test_fragmented_pool_decode_matches_hf(block_size):
    """Chunked prefill then token-by-token decode with blocks handed out in random order: the
    decode steps read visit-order tables (which differ from position order here) and must
    still give HF's logits at every position."""
    engine = Engine(FIXTURES / "tiny_llama", device="cpu", max_model_len=256, max_num_seqs=2,
                    block_size=block_size, prefill_chunk=5)
    fragment(engine)
    ids, logits, _ = reference("tiny_llama")[-1]
    half = len(ids) // 2
    seq = Sequence(ids[:half], SamplingParams())
    assert_close(engine.backend.to_numpy(engine.prefill(seq))[0], logits[half - 1])
    differ = 0
    for p in range(half, len(ids)):
        seq.token_ids.append(ids[p])
        _, arrays = engine.plan([seq], [1], with_ids=False)
        n = len(seq.block_table)
        assert arrays["block_tables"][0, :n].tolist() == seq.block_table.visit
        differ += seq.block_table.visit != seq.block_table.blocks
        got = engine.backend.to_numpy(engine.forward([seq], [1]))[0]
        assert_close(got, logits[p])
    assert differ > 0
    engine.kv.release(seq.block_table)


def test_fragmented_pool_greedy_generation_matches_hf():
    engine = Engine(FIXTURES / "tiny_qwen2", device="cpu", max_model_len=256, max_num_seqs=4,
                    block_size=2)
    fragment(engine, seed=1)
    refs = reference("tiny_qwen2")
    params = [SamplingParams(max_tokens=len(g), temperature=0.0) for _, _, g in refs]
    out = {s.index: s.output_ids for s in engine.generate([i for i, _, _ in refs], params)}
    for i, (_, _, greedy) in enumerate(refs):
        assert out[i] == greedy.tolist()
    assert engine.kv.allocator.num_free == engine.kv.num_blocks - 1
