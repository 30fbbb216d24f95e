"""One CUDA graph per decode batch-size bucket (captured on first use, replayed every
token). All step inputs live in ONE static int32 device buffer, so a step costs one small
host-to-device copy, one replay and, for greedy rows, one device-to-host copy of the
argmax ids (captured in the graph too). Padded rows read and write only the engine's
scratch KV block."""

from __future__ import annotations

import numpy as np

from .backends.base import StepMeta

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
# field order inside the packed buffer; block_tables is [bucket, max_blocks]
FIELDS = ("ids", "positions", "slot_mapping", "seq_lens", "query_start", "logits_indices",
          "block_tables")


class DecodeGraphs:
    def __init__(self, engine):
        self.engine = engine
        top = engine.max_num_seqs
        self.buckets = [b for b in BUCKETS if b < top] + [top]
        self.captured: dict[int, tuple] = {}
        self.greedy_ids = None  # argmax of the last replay's rows, on the device

    def can_run(self, batch: int) -> bool:
        return batch <= self.buckets[-1]

    def _sizes(self, bucket: int) -> list[int]:
        nb = self.engine.max_blocks_per_seq
        return [bucket, bucket, bucket, bucket, bucket + 1, bucket, bucket * nb]

    def _pack(self, ids: np.ndarray, arrays: dict, bucket: int) -> np.ndarray:
        e, n = self.engine, len(ids)
        pad = bucket - n
        tables = np.zeros((bucket, e.max_blocks_per_seq), np.int32)
        tables[:n] = arrays["block_tables"]
        tables[n:, 0] = e.scratch_block
        fill = lambda a, v: np.concatenate([a, np.full(pad, v, np.int32)])  # noqa: E731
        parts = [fill(ids, 0), fill(arrays["positions"], 0),
                 fill(arrays["slot_mapping"], e.scratch_block * e.block_size),
                 fill(arrays["seq_lens"], 1), np.arange(bucket + 1), np.arange(bucket),
                 tables.ravel()]
        return np.concatenate(parts).astype(np.int32)

    def _capture(self, bucket: int):
        e, b = self.engine, self.engine.backend
        empty = np.zeros(0, np.int32)
        host = self._pack(empty, dict(positions=empty, slot_mapping=empty, seq_lens=empty,
                                      block_tables=np.zeros((0, e.max_blocks_per_seq))), bucket)
        buf = b.asarray(host, dtype="int32")
        views, at = {}, 0
        for name, size in zip(FIELDS, self._sizes(bucket)):
            views[name], at = buf[at:at + size], at + size
        views["block_tables"] = views["block_tables"].reshape(bucket, e.max_blocks_per_seq)
        meta = StepMeta(**{k: v for k, v in views.items() if k != "ids"}, max_query_len=1,
                        max_seq_len=e.max_model_len, is_decode=True)

        def step():
            logits = e.model.forward(views["ids"], meta, e.kv.layers)
            # the argmax lands in the ids view: the next step's input when decode is pipelined
            # (the host reads it before it writes new ids: both are ordered on the stream)
            greedy = b.argmax(logits, out=views["ids"])
            return logits, greedy

        self.captured[bucket] = (buf, b.graph(step))
        return self.captured[bucket]

    def run(self, ids: np.ndarray | None, arrays: dict):
        """ids None: keep the ids the previous replay of this bucket wrote (its argmax)."""
        n = len(arrays["seq_lens"])
        bucket = next(b for b in self.buckets if b >= n)
        buf, replay = self.captured.get(bucket) or self._capture(bucket)
        if ids is None:
            buf[bucket:].set(self._pack(np.zeros(n, np.int32), arrays, bucket)[bucket:])
        else:
            buf.set(self._pack(ids, arrays, bucket))
        logits, greedy = replay()
        self.greedy_ids = greedy[:n]
        return logits[:n]
