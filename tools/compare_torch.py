"""HF transformers baseline for `rawengine bench --compare-torch` (run where torch exists).

Builds the same architecture as a rawengine preset with random fp16 weights on the GPU and
times batch decode two ways: `generate` eagerly, and a static cache with
torch.compile(mode="reduce-overhead"). Prints a JSON line last: decode tok/s per sequence.

    python tools/compare_torch.py llama-3-8b --batch 1 --prompt-len 128 --new-tokens 256
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def hf_model(preset: str):
    import torch
    import transformers

    from rawengine.presets import PRESETS

    d = dict(PRESETS[preset])
    arch = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "mistral": "MistralConfig"}
    cfg = getattr(transformers, arch[d.pop("model_type")])(**d)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float16)
    return model.eval()


def decode_rate(model, batch: int, prompt_len: int, new_tokens: int, **gen_kw) -> float:
    """Decode tok/s per sequence: (time(new) - time(1 token)) / (new - 1)."""
    import torch

    ids = torch.randint(0, model.config.vocab_size, (batch, prompt_len), device="cuda")
    kw = dict(do_sample=False, min_new_tokens=new_tokens, pad_token_id=0, **gen_kw)

    def timed(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=n, **{**kw, "min_new_tokens": n})
        torch.cuda.synchronize()
        return time.perf_counter() - t

    timed(new_tokens)  # warm-up (and compilation)
    return (new_tokens - 1) / (timed(new_tokens) - timed(1))


def main() -> None:
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("preset")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--skip-compile", action="store_true")
    a = p.parse_args()
    model = hf_model(a.preset)
    out = {"generate_eager": decode_rate(model, a.batch, a.prompt_len, a.new_tokens)}
    if not a.skip_compile:
        # transformers compiles the forward itself (reduce-overhead) when the cache is static
        t = time.perf_counter()
        out["static_compile"] = decode_rate(model, a.batch, a.prompt_len, a.new_tokens,
                                            cache_implementation="static")
        out["compile_s"] = time.perf_counter() - t
    print(json.dumps(out))


if __name__ == "__main__":
    main()
