"""One CUDA graph per decode batch-size bucket (captured on first use, replayed every
token). All step inputs live in ONE static int32 device buffer, so a step costs one small
host-to-device copy and one replay. The graph's argmax writes the greedy ids both into the
buffer (the next step's input ids) and into pinned host memory (two slots, alternating), so
the host reads them after an event, with no device-to-host copy on the stream (that copy
cost ~10 us a step: docs/launch_notes.md, "Session 11"). Padded rows read and write only the
engine's scratch KV block."""

from __future__ import annotations

import numpy as np

from .backends.base import StepMeta

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
# field order inside the packed buffer; block_tables is [bucket, max_blocks]
FIELDS = ("ids", "positions", "slot_mapping", "seq_lens", "query_start", "logits_indices",
          "host_slot", "block_tables")


class DecodeGraphs:
    def __init__(self, engine):
        self.engine = engine
        top = engine.max_num_seqs
        self.buckets = [b for b in BUCKETS if b < top] + [top]
        # A backend whose kernels differ for short contexts (Backend.short_context: the CUDA
        # backend's fused attention + o_proj) gets a second graph per bucket, captured with that
        # capacity and replayed while every row fits it. Both graphs of a bucket read one input
        # buffer, so the argmax one writes is the next step's input for either.
        short = engine.backend.short_context(engine.cfg)
        self.short = short if short and short < engine.max_model_len else None
        self.bufs: dict[int, object] = {}
        self.rings: dict[int, np.ndarray] = {}  # pinned [2, bucket] int32: argmax per slot
        self.captured: dict[tuple[int, int], object] = {}
        self.slot = 0  # the host slot the next replay writes
        self.tokens = None  # () -> the last replay's greedy ids (waits for the replay)

    def can_run(self, batch: int) -> bool:
        return batch <= self.buckets[-1]

    def _sizes(self, bucket: int) -> list[int]:
        nb = self.engine.max_blocks_per_seq
        return [bucket, bucket, bucket, bucket, bucket + 1, bucket, 1, bucket * nb]

    def _pack(self, ids: np.ndarray, arrays: dict, bucket: int, slot: int = 0) -> np.ndarray:
        e, n = self.engine, len(ids)
        pad = bucket - n
        tables = np.zeros((bucket, e.max_blocks_per_seq), np.int32)
        tables[:n] = arrays["block_tables"]
        tables[n:, 0] = e.scratch_block
        fill = lambda a, v: np.concatenate([a, np.full(pad, v, np.int32)])  # noqa: E731
        parts = [fill(ids, 0), fill(arrays["positions"], 0),
                 fill(arrays["slot_mapping"], e.scratch_block * e.block_size),
                 fill(arrays["seq_lens"], 1), np.arange(bucket + 1), np.arange(bucket), [slot],
                 tables.ravel()]
        return np.concatenate(parts).astype(np.int32)

    def _capture(self, bucket: int, capacity: int):
        e, b = self.engine, self.engine.backend
        buf = self.bufs.get(bucket)
        if buf is None:
            empty = np.zeros(0, np.int32)
            host = self._pack(empty, dict(positions=empty, slot_mapping=empty, seq_lens=empty,
                                          block_tables=np.zeros((0, e.max_blocks_per_seq))),
                              bucket)
            buf = self.bufs[bucket] = b.asarray(host, dtype="int32")
            self.rings[bucket] = b.pinned((2, bucket), "int32")
        ring = self.rings[bucket]
        views, at = {}, 0
        for name, size in zip(FIELDS, self._sizes(bucket)):
            views[name], at = buf[at:at + size], at + size
        views["block_tables"] = views["block_tables"].reshape(bucket, e.max_blocks_per_seq)
        meta = StepMeta(**{k: v for k, v in views.items() if k not in ("ids", "host_slot")},
                        max_query_len=1, max_seq_len=capacity, is_decode=True)

        def step():
            with b.in_forward():
                logits = e.model.forward(views["ids"], meta, e.kv.layers)
            # the argmax lands in the ids view: the next step's input when decode is pipelined
            # (the host reads it before it writes new ids: both are ordered on the stream)
            b.argmax(logits, out=views["ids"], host_out=ring, host_slot=views["host_slot"])
            return logits

        self.captured[bucket, capacity] = (buf, b.graph(step))
        return self.captured[bucket, capacity]

    def run(self, ids: np.ndarray | None, arrays: dict):
        """ids None: keep the ids the previous replay of this bucket wrote (its argmax)."""
        n = len(arrays["seq_lens"])
        bucket = next(b for b in self.buckets if b >= n)
        capacity = self.engine.max_model_len
        if self.short is not None and int(np.max(arrays["seq_lens"])) <= self.short:
            capacity = self.short
        buf, replay = self.captured.get((bucket, capacity)) or self._capture(bucket, capacity)
        slot, ring = self.slot, self.rings[bucket]
        self.slot ^= 1  # the host reads this step's slot while the next step writes the other
        if ids is None:
            buf[bucket:].set(self._pack(np.zeros(n, np.int32), arrays, bucket, slot)[bucket:])
        else:
            buf.set(self._pack(ids, arrays, bucket, slot))
        logits = replay()
        self.tokens = self.engine.backend.when_done(lambda: ring[slot, :n].tolist())
        return logits[:n]
