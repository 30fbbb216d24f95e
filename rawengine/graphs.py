"""One CUDA graph per decode batch-size bucket (captured on first use, replayed every
token). Inputs live in static device buffers; a step copies its padded metadata into
them and replays. Padded rows read and write only the engine's scratch KV block."""

from __future__ import annotations

import numpy as np

from .backends.base import StepMeta

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


class DecodeGraphs:
    def __init__(self, engine):
        self.engine = engine
        top = engine.max_num_seqs
        self.buckets = [b for b in BUCKETS if b < top] + [top]
        self.captured: dict[int, tuple[dict, object]] = {}

    def can_run(self, batch: int) -> bool:
        return batch <= self.buckets[-1]

    def _padded(self, ids: np.ndarray, arrays: dict, bucket: int) -> dict:
        e, n = self.engine, len(ids)
        pad = bucket - n
        scratch_slot = e.scratch_block * e.block_size
        tables = np.zeros((bucket, e.max_blocks_per_seq), np.int32)
        tables[:n] = arrays["block_tables"]
        tables[n:, 0] = e.scratch_block

        def padded(a, value):
            return np.concatenate([a, np.full(pad, value, np.int32)]).astype(np.int32)

        return dict(ids=padded(ids, 0), positions=padded(arrays["positions"], 0),
                    slot_mapping=padded(arrays["slot_mapping"], scratch_slot),
                    query_start=np.arange(bucket + 1, dtype=np.int32),
                    seq_lens=padded(arrays["seq_lens"], 1), block_tables=tables,
                    logits_indices=np.arange(bucket, dtype=np.int32))

    def _capture(self, bucket: int):
        e, b = self.engine, self.engine.backend
        empty = np.zeros(0, np.int32)
        host = self._padded(empty, dict(positions=empty, slot_mapping=empty, seq_lens=empty,
                                        block_tables=np.zeros((0, e.max_blocks_per_seq),
                                                              np.int32)), bucket)
        bufs = {k: b.asarray(v, dtype="int32") for k, v in host.items()}
        meta = StepMeta(**{k: v for k, v in bufs.items() if k != "ids"}, max_query_len=1,
                        max_seq_len=e.max_model_len, is_decode=True)

        def step():
            return e.model.forward(bufs["ids"], meta, e.kv.layers)

        step()  # warm-up: compiles and loads every kernel outside the capture
        self.captured[bucket] = (bufs, b.graph(step))
        return self.captured[bucket]

    def run(self, ids: np.ndarray, arrays: dict):
        n = len(ids)
        bucket = next(b for b in self.buckets if b >= n)
        bufs, replay = self.captured.get(bucket) or self._capture(bucket)
        for k, v in self._padded(ids, arrays, bucket).items():
            bufs[k].set(v)
        return replay()[:n]
