"""The Python API: LLM(model).generate(prompts, SamplingParams(...)) and LLM.stream(...)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterator

from .engine import Engine
from .errors import RawEngineError
from .sampling import SamplingParams
from .tokenizer import Tokenizer

Prompt = str | list[int] | list[dict]  # text, token ids, or chat messages


@dataclasses.dataclass
class Completion:
    text: str
    token_ids: list[int]
    prompt_token_ids: list[int]
    finish_reason: str | None


class TextStream:
    """Detokenizes one sequence incrementally and applies stop strings: text that might be
    the start of a stop string is held back until it is known not to be one."""

    def __init__(self, tokenizer: Tokenizer, stop: list[str]):
        self.detok = tokenizer.detokenizer()
        self.stop = stop
        self.pending = ""  # decoded but not yet emitted
        self.text = ""  # emitted so far
        self.stopped = False

    def feed(self, token_id: int) -> str:
        return self._emit(self.pending + self.detok.feed(token_id), final=False)

    def finish(self) -> str:
        return "" if self.stopped else self._emit(self.pending + self.detok.finalize(), final=True)

    def _emit(self, text: str, final: bool) -> str:
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            out, self.pending, self.stopped = text[:min(hits)], "", True
        else:
            keep = 0 if final else max((k for s in self.stop for k in range(1, len(s))
                                        if text.endswith(s[:k])), default=0)
            out, self.pending = text[:len(text) - keep], text[len(text) - keep:]
        self.text += out
        return out


class LLM:
    def __init__(self, model: str | None = None, *, device: str = "auto", dtype: str | None = None,
                 max_model_len: int | None = None, max_num_seqs: int = 8, **engine_kw):
        from .hub import resolve_model  # deferred: pulls in huggingface_hub

        self.path = resolve_model(model)
        self.engine = Engine(self.path, device=device, dtype=dtype, max_model_len=max_model_len,
                             max_num_seqs=max_num_seqs, **engine_kw)
        self.tokenizer = Tokenizer.from_dir(self.path, config=self.engine.cfg)
        self.eos_ids = set(self.tokenizer.eos_token_ids)

    def default_params(self, **overrides) -> SamplingParams:
        """SamplingParams from generation_config.json, then the given overrides."""
        f = Path(self.path) / "generation_config.json"
        gen = json.loads(f.read_text()) if f.is_file() else {}
        d = {k: gen[k] for k in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")
             if gen.get(k) is not None}
        if not gen.get("do_sample", False):  # HF semantics: greedy unless asked to sample
            d["temperature"] = 0.0
        d.update({k: v for k, v in overrides.items() if v is not None})
        return SamplingParams(**d)

    def encode(self, prompt: Prompt, *, chat: bool = False, system: str | None = None) -> list[int]:
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        if isinstance(prompt, list):  # chat messages
            return self.tokenizer.encode_chat(prompt)
        if not isinstance(prompt, str):
            raise RawEngineError(f"a prompt must be text, token ids or chat messages, "
                                 f"not {type(prompt).__name__}")
        if chat and self.tokenizer.has_chat_template:
            msgs = ([{"role": "system", "content": system}] if system else [])
            return self.tokenizer.encode_chat(msgs + [{"role": "user", "content": prompt}])
        text = f"{system}\n\n{prompt}" if system else prompt
        return self.tokenizer.encode(text)

    def generate(self, prompts: Prompt | list[Prompt], params: SamplingParams | None = None,
                 *, chat: bool = False) -> list[Completion]:
        """Completions for a batch of prompts, decoded together."""
        single = isinstance(prompts, str) or (prompts and isinstance(prompts[0], (int, dict)))
        prompts = [prompts] if single else list(prompts)
        params = params or self.default_params()
        ids = [self.encode(p, chat=chat) for p in prompts]
        streams = [TextStream(self.tokenizer, params.stop) for _ in prompts]
        seqs = {}
        for seq in self.engine.generate(ids, [params] * len(ids), self.eos_ids):
            seqs[seq.index] = seq
            self._feed(streams[seq.index], seq)
        for s in streams:
            s.finish()
        return [Completion(s.text, seqs[i].output_ids if i in seqs else [], ids[i],
                           seqs[i].finish_reason if i in seqs else "length")
                for i, s in enumerate(streams)]

    def stream(self, prompt: Prompt, params: SamplingParams | None = None, *, chat: bool = False,
               system: str | None = None) -> Iterator[str]:
        """Text pieces of one completion as they are generated."""
        params = params or self.default_params()
        ids = self.encode(prompt, chat=chat, system=system)
        ts = TextStream(self.tokenizer, params.stop)
        for seq in self.engine.generate([ids], [params], self.eos_ids):
            piece = self._feed(ts, seq)
            if piece:
                yield piece
        tail = ts.finish()
        if tail:
            yield tail

    def _feed(self, ts: TextStream, seq) -> str:
        token = seq.token_ids[-1]
        if seq.finish_reason == "stop":  # the EOS token itself is not text
            return ""
        piece = ts.feed(token)
        if ts.stopped:
            seq.finished, seq.finish_reason = True, "stop"
        return piece
