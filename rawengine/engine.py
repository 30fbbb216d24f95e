"""The engine: owns backend, model and KV cache; plans each step's metadata once and runs
the model; generation is a generator over steps (prefill in chunks, then batched decode)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from .backends import make_backend
from .backends.base import StepMeta
from .config import ModelConfig
from .errors import RawEngineError
from .kv_cache import BlockTable, KVCache
from .models import load_model
from .sampling import SamplingParams, sample

DEFAULT_MAX_MODEL_LEN = 8192


@dataclasses.dataclass
class Sequence:
    token_ids: list[int]
    params: SamplingParams
    index: int = 0  # position in the request list
    num_prompt: int = 0
    num_cached: int = 0  # tokens whose K/V are already in the cache
    block_table: BlockTable = dataclasses.field(default_factory=BlockTable)
    finished: bool = False  # set by the engine (EOS, max tokens) or the caller (stop string)
    finish_reason: str | None = None
    rng: np.random.Generator | None = None

    def __post_init__(self):
        self.num_prompt = len(self.token_ids)
        self.rng = np.random.default_rng(self.params.seed)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt:]


@dataclasses.dataclass
class Stats:
    prompt_tokens: int = 0
    prefill_s: float = 0.0
    generated_tokens: int = 0
    decode_s: float = 0.0
    decode_steps: int = 0


class Engine:
    def __init__(self, model_path: str | Path | ModelConfig, *, device: str = "auto", dtype: str | None = None,
                 max_model_len: int | None = None, max_num_seqs: int = 8,
                 block_size: int | None = None, prefill_chunk: int = 512,
                 use_graphs: bool = True, attention: str | None = None):
        # a ModelConfig instead of a path: random weights of that architecture (benchmarks)
        is_cfg = isinstance(model_path, ModelConfig)
        self.cfg = cfg = model_path if is_cfg else ModelConfig.from_dir(model_path)
        self.backend = make_backend(device, dtype, cfg)
        limit = cfg.max_position_embeddings
        if cfg.sliding_window:  # attention is full, so stay inside the window
            limit = min(limit, cfg.sliding_window)
        self.max_model_len = min(limit, max_model_len or DEFAULT_MAX_MODEL_LEN)
        self.model = load_model(model_path, self.backend, self.max_model_len)
        if attention is not None:
            self.backend.attention_variant = attention
        calib = None if is_cfg else Path(model_path) / "rawengine_softmax.json"
        if calib is not None and calib.is_file():  # tools/calibrate_softmax.py
            self.backend.softmax_phi = float(json.loads(calib.read_text())["phi"])
        self.block_size = block_size or self.backend.default_block_size
        self.max_num_seqs, self.prefill_chunk = max_num_seqs, prefill_chunk
        blocks_per_seq = -(-self.max_model_len // self.block_size)
        self.max_blocks_per_seq = blocks_per_seq
        # the last block is scratch: padded rows of a captured batch write there
        self.kv = KVCache(self.backend, cfg, blocks_per_seq * max_num_seqs + 1, self.block_size)
        self.scratch_block = self.kv.allocator.allocate(1)[0]
        self.graphs, self.greedy_tokens = None, None
        if use_graphs and getattr(self.backend, "supports_graphs", False):
            from .graphs import DecodeGraphs
            self.graphs = DecodeGraphs(self)
        self.stats = Stats()

    def weight_bytes(self) -> int:
        """Bytes of weights one decode step reads (the embedding table: one row only)."""
        m = self.model
        arrays = [a for layer in m.layers for a in layer.values()] + [m.norm, m.lm_head]
        return sum(int(a.nbytes) for a in arrays)

    def kv_bytes_per_step(self, context: int) -> int:
        """K and V bytes attention reads for one sequence at this context length."""
        c, item = self.cfg, self.kv.layers[0][0].itemsize
        return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * context * item

    # --- one step -------------------------------------------------------------------
    def plan(self, seqs: list[Sequence], counts: list[int],
             with_ids: bool = True) -> tuple[np.ndarray | None, dict]:
        """Host arrays for a step where seqs[i] adds counts[i] new tokens to the cache.
        Vectorised over tokens: at batch 32 a per-sequence loop of small numpy calls cost
        ~0.5 ms a step on the host."""
        bs, b = self.block_size, len(seqs)
        tables = np.zeros((b, self.max_blocks_per_seq), np.int32)
        # A decode step's tables are in visit order (kv_cache.visit_order): only attention reads
        # them, and the slot of each new key is in the last block, which is last in both orders.
        decode = max(counts) == 1
        for i, (s, n) in enumerate(zip(seqs, counts)):
            self.kv.reserve(s.block_table, s.num_cached + n)
            t = s.block_table
            tables[i, :len(t)] = t.visit if decode else t.blocks
        n_new = np.asarray(counts, np.int32)
        starts = np.asarray([s.num_cached for s in seqs], np.int32)
        qstart = np.zeros(b + 1, np.int32)
        np.cumsum(n_new, out=qstart[1:])
        row = np.repeat(np.arange(b), n_new)  # sequence of each token
        positions = (np.arange(qstart[-1]) - qstart[row] + starts[row]).astype(np.int32)
        slots = tables[row, positions // bs] * bs + positions % bs
        arrays = dict(positions=positions, slot_mapping=slots.astype(np.int32),
                      query_start=qstart, seq_lens=starts + n_new, block_tables=tables,
                      logits_indices=qstart[1:] - 1)
        if not with_ids:  # the input tokens are already on the device (pipelined decode)
            return None, arrays
        ids = [t for s, n in zip(seqs, counts) for t in s.token_ids[s.num_cached:s.num_cached + n]]
        return np.asarray(ids, np.int32), arrays

    def to_meta(self, arrays: dict, max_query_len: int, max_seq_len: int) -> StepMeta:
        b = self.backend
        dev = {k: b.asarray(v, dtype="int32") for k, v in arrays.items()}
        return StepMeta(**dev, max_query_len=max_query_len, max_seq_len=max_seq_len,
                        is_decode=max_query_len == 1)

    def forward(self, seqs: list[Sequence], counts: list[int], feedback: bool = False):
        """Runs one step; returns logits [len(seqs), V] on the backend. feedback: a decode
        graph step whose input ids are the previous graph step's argmax, still on the device."""
        ids, arrays = self.plan(seqs, counts, with_ids=not feedback)
        self.greedy_tokens = None  # () -> the argmax a decode graph computed, on the host
        if self.graphs is not None and max(counts) == 1 and self.graphs.can_run(len(seqs)):
            logits = self.graphs.run(ids, arrays)
            self.greedy_tokens = self.graphs.tokens
        else:
            meta = self.to_meta(arrays, max(counts), int(arrays["seq_lens"].max()))
            with self.backend.in_forward():
                logits = self.model.forward(self.backend.asarray(ids, dtype="int32"), meta,
                                            self.kv.layers)
        for s, n in zip(seqs, counts):
            s.num_cached += n
        return logits

    def sample(self, logits, seqs: list[Sequence]) -> list[int]:
        plain_greedy = all(s.params.is_greedy and s.params.repetition_penalty == 1.0
                           for s in seqs)
        if plain_greedy and self.greedy_tokens is not None:
            return self.greedy_tokens()
        if hasattr(self.backend, "sample_rows"):
            return self.backend.sample_rows(logits, seqs)
        host = self.backend.to_numpy(logits)
        return [sample(host[i], s.params, np.asarray(s.token_ids), s.rng)
                for i, s in enumerate(seqs)]

    # --- generation -------------------------------------------------------------
    def check_prompt(self, prompt_ids: list[int]) -> None:
        if not prompt_ids:
            raise RawEngineError("the prompt is empty (no tokens)")
        if len(prompt_ids) >= self.max_model_len:
            raise RawEngineError(f"the prompt has {len(prompt_ids)} tokens but the context holds "
                                 f"{self.max_model_len}; shorten it or raise --max-model-len")
        bad = [t for t in prompt_ids if not 0 <= t < self.cfg.vocab_size]
        if bad:
            raise RawEngineError(f"token id {bad[0]} is outside the vocabulary "
                                 f"(size {self.cfg.vocab_size})")

    def prefill(self, seq: Sequence):
        """Prefill one sequence in chunks; returns the logits of its last prompt token."""
        remaining = len(seq.token_ids) - seq.num_cached
        while True:
            n = min(remaining, self.prefill_chunk)
            logits = self.forward([seq], [n])
            remaining -= n
            if remaining == 0:
                return logits

    def generate(self, prompts: list[list[int]], params: list[SamplingParams],
                 eos_ids: set[int] = frozenset()) -> Iterator[Sequence]:
        """Yields a Sequence each time it gains a token. The caller may set
        seq.finished = True (e.g. a stop string) to end that sequence early."""
        if len(prompts) > self.max_num_seqs:
            raise RawEngineError(f"{len(prompts)} prompts exceed max_num_seqs={self.max_num_seqs}")
        for p in prompts:
            self.check_prompt(p)
        seqs = [Sequence(list(p), sp, index=i) for i, (p, sp) in enumerate(zip(prompts, params))]
        self.stats = st = Stats(prompt_tokens=sum(len(p) for p in prompts))
        try:
            t0 = time.perf_counter()
            first = []
            for s in seqs:
                if s.params.max_tokens == 0:
                    s.finished, s.finish_reason = True, "length"
                    continue
                first.append((s, self.prefill(s)))
            new_ids = [self.sample(lg, [s])[0] for s, lg in first]
            self.backend.synchronize()
            st.prefill_s = time.perf_counter() - t0  # also the time to first token
            running = [s for s, _ in first]
            yield from self._append(running, new_ids, eos_ids)
            running = [s for s in running if not s.finished]
            t1 = time.perf_counter()
            while running:
                if self.can_pipeline(running):
                    yield from self._decode_pipelined(running, eos_ids)
                else:
                    logits = self.forward(running, [1] * len(running))
                    yield from self._append(running, self.sample(logits, running), eos_ids)
                    st.decode_steps += 1
                running = [s for s in running if not s.finished]
                for s in seqs:
                    if s.finished and s.block_table:
                        self.kv.release(s.block_table)
            st.decode_s = time.perf_counter() - t1
        finally:
            for s in seqs:
                self.kv.release(s.block_table)

    def can_pipeline(self, seqs: list[Sequence]) -> bool:
        """Plain greedy rows on a captured decode graph, with room for one step ahead."""
        return (self.graphs is not None and self.graphs.can_run(len(seqs))
                and all(s.params.is_greedy and s.params.repetition_penalty == 1.0
                        and len(s.token_ids) + 2 < self.max_model_len for s in seqs))

    def _decode_pipelined(self, seqs: list[Sequence], eos_ids) -> Iterator[Sequence]:
        """Greedy decode one step ahead: the graph writes its argmax into the next step's
        input ids, so step k+1 is launched before the host reads step k's tokens and the
        host work hides behind the GPU. Returns when the batch changes (a sequence finished,
        or is about to run out of context); the step already in flight is drained first."""
        self.forward(seqs, [1] * len(seqs))  # input ids from the host
        pending = self.greedy_tokens
        while True:
            room = all(len(s.token_ids) + 3 < self.max_model_len for s in seqs)
            if room:
                self.forward(seqs, [1] * len(seqs), feedback=True)
                ahead = self.greedy_tokens
            yield from self._append(seqs, pending(), eos_ids)
            self.stats.decode_steps += 1
            if not room or any(s.finished for s in seqs):
                break
            pending = ahead
        if room:  # the step in flight already holds the survivors' next tokens
            yield from self._append(seqs, ahead(), eos_ids)
            self.stats.decode_steps += 1

    def _append(self, seqs, new_ids, eos_ids) -> Iterator[Sequence]:
        for s, t in zip(seqs, new_ids):
            if s.finished:  # the caller stopped it while we computed this step
                continue
            s.token_ids.append(int(t))
            self.stats.generated_tokens += 1
            if int(t) in eos_ids and not s.params.ignore_eos:
                s.finished, s.finish_reason = True, "stop"
            elif len(s.output_ids) >= s.params.max_tokens:
                s.finished, s.finish_reason = True, "length"
            elif len(s.token_ids) >= self.max_model_len:
                s.finished, s.finish_reason = True, "length"
            yield s
