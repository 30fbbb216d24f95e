"""Paged KV cache: a pool of fixed-size blocks per layer, a block allocator with reference
counts (so prefix sharing can come later without a rewrite), and per-sequence tables."""

from __future__ import annotations

import bisect

from .backends.base import Backend
from .config import ModelConfig
from .errors import RawEngineError


class BlockAllocator:
    def __init__(self, num_blocks: int):
        self.ref_counts = [0] * num_blocks
        self.free_blocks = list(range(num_blocks - 1, -1, -1))  # pop() hands out 0, 1, ...

    @property
    def num_free(self) -> int:
        return len(self.free_blocks)

    def allocate(self, n: int) -> list[int]:
        if n > len(self.free_blocks):
            raise RawEngineError(f"KV cache is full: need {n} more blocks, {self.num_free} free")
        out = [self.free_blocks.pop() for _ in range(n)]
        for b in out:
            self.ref_counts[b] = 1
        return out

    def share(self, blocks: list[int]) -> None:
        for b in blocks:
            self.ref_counts[b] += 1

    def free(self, blocks: list[int]) -> None:
        for b in blocks:
            self.ref_counts[b] -= 1
            if self.ref_counts[b] == 0:
                self.free_blocks.append(b)


def visit_order(blocks: list[int]) -> list[int]:
    """The order decode attention reads a sequence's blocks in: ascending block id (pool
    address), except the last block, which holds the newest keys and may be partly filled, so it
    stays last. Decode attention sums over all keys, so their order is free; a block table is in
    position order. On a fragmented pool, address order reads ~1.5% faster (B8 32/8 L64k: 705 ->
    693 us, H100; docs/decode_attention_notes.md, sessions 23-24)."""
    return sorted(blocks[:-1]) + blocks[-1:]


class BlockTable:
    """A sequence's KV blocks twice: `blocks` in position order (key p lives in block
    blocks[p // BS]: prefill, slot mapping) and `visit`, the same blocks in visit_order (decode
    attention). `visit` is kept up to date block by block (an O(n) insert per new block)."""

    def __init__(self):
        self.blocks: list[int] = []
        self.visit: list[int] = []

    def __len__(self) -> int:
        return len(self.blocks)

    def __iter__(self):
        return iter(self.blocks)

    def extend(self, new: list[int]) -> None:
        if not new:
            return
        if self.visit:  # the old last block is full now: it joins the sorted part
            bisect.insort(self.visit, self.visit.pop())
        for b in new[:-1]:
            bisect.insort(self.visit, b)
        self.visit.append(new[-1])
        self.blocks.extend(new)

    def clear(self) -> None:
        self.blocks.clear()
        self.visit.clear()


class KVCache:
    """Per-layer (k_cache, v_cache) pairs, each [num_blocks, Hkv, block_size, D]."""

    def __init__(self, backend: Backend, cfg: ModelConfig, num_blocks: int, block_size: int):
        self.block_size, self.num_blocks = block_size, num_blocks
        self.layers = [backend.alloc_kv(num_blocks, cfg.num_key_value_heads, block_size,
                                        cfg.head_dim) for _ in range(cfg.num_hidden_layers)]
        self.allocator = BlockAllocator(num_blocks)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def reserve(self, block_table: BlockTable, num_tokens: int) -> None:
        """Grow a sequence's block table in place so it can hold num_tokens."""
        extra = self.blocks_needed(num_tokens) - len(block_table)
        if extra > 0:
            block_table.extend(self.allocator.allocate(extra))

    def release(self, block_table: BlockTable) -> None:
        self.allocator.free(block_table.blocks)
        block_table.clear()
