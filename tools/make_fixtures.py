#!/usr/bin/env python3
"""Write tiny random Hugging Face checkpoints and HF reference outputs into tests/fixtures/.

Needs torch + transformers (CPU is enough); rawengine itself never imports them.

    python3 tools/make_fixtures.py            # (re)write every fixture, then verify them
    python3 tools/make_fixtures.py --check    # only verify the fixtures already on disk

Every fixture directory gets config.json, generation_config.json, tokenizer.json, the weights
(model.safetensors, or shards + model.safetensors.index.json) and reference.npz holding, for
each prompt i:

    input_ids_<i>  int64 [T]        random prompt token ids
    logits_<i>     float32 [T, V]   HF logits for every position, float32, eager attention
    greedy_<i>     int64 [8]        HF generate(do_sample=False, max_new_tokens=8) new tokens

Everything is deterministic (fixed seeds). The checks after writing reload each directory
with transformers and require the stored logits to be reproduced exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures"
MAX_NEW_TOKENS = 8
MIN_MARGIN = 5e-2  # smallest allowed top-1/top-2 logit gap along each greedy path

# Weight init (the HF default std 0.02 makes every logit ~0 at these sizes).
EMBED_STD = 1.0
LINEAR_STD = 0.15
LM_HEAD_STD = 0.2  # only for untied heads
BIAS_STD = 0.3
NORM_SPREAD = 0.2  # RMSNorm weights ~ U(1 - s, 1 + s)

COMMON = dict(
    num_hidden_layers=2,
    hidden_act="silu",
    rms_norm_eps=1e-5,
    bos_token_id=None,
    eos_token_id=None,  # never stop generation early
    pad_token_id=None,
    use_cache=True,
    initializer_range=0.02,
)

# name: (model class, config class, config kwargs, prompt lengths, seed, save options)
FIXTURES = {
    "tiny_llama": dict(
        model=LlamaForCausalLM,
        config=LlamaConfig,
        kwargs=dict(
            vocab_size=256, hidden_size=64, intermediate_size=128,
            num_attention_heads=8, num_key_value_heads=2, head_dim=8,
            max_position_embeddings=256, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        prompts=(1, 7, 33), seed=1001, dtype="float32", legacy_config=True,
    ),
    "tiny_llama3": dict(
        model=LlamaForCausalLM,
        config=LlamaConfig,
        kwargs=dict(
            vocab_size=256, hidden_size=64, intermediate_size=128,
            num_attention_heads=4, num_key_value_heads=1, head_dim=16,
            max_position_embeddings=512, tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
        prompts=(1, 7, 100), seed=1002, dtype="float32", legacy_config=True,
    ),
    "tiny_qwen2": dict(
        model=Qwen2ForCausalLM,
        config=Qwen2Config,
        kwargs=dict(
            vocab_size=256, hidden_size=64, intermediate_size=128,
            num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512, tie_word_embeddings=True,
            use_sliding_window=False, sliding_window=None, max_window_layers=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ),
        prompts=(1, 7, 33), seed=1003, dtype="float32", legacy_config=True,
    ),
    "tiny_mistral": dict(
        model=MistralForCausalLM,
        config=MistralConfig,
        kwargs=dict(
            vocab_size=256, hidden_size=64, intermediate_size=96,
            # head_dim * heads (128) != hidden_size (64), as in Mistral-Nemo: read head_dim.
            num_attention_heads=4, num_key_value_heads=2, head_dim=32,
            max_position_embeddings=512, tie_word_embeddings=False, sliding_window=None,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        prompts=(1, 7, 33), seed=1004, dtype="float32", legacy_config=False,
    ),
    "tiny_llama_bf16": dict(
        model=LlamaForCausalLM,
        config=LlamaConfig,
        kwargs="tiny_llama",
        prompts=(1, 7, 33), seed=1005, dtype="bfloat16", legacy_config=True,
    ),
    "tiny_llama_sharded": dict(
        model=LlamaForCausalLM,
        config=LlamaConfig,
        kwargs="tiny_llama",
        prompts=(1, 7, 33), seed=1006, dtype="float32", legacy_config=False,
        max_shard_size="200KB",
    ),
}


def spec_kwargs(name: str) -> dict:
    kw = FIXTURES[name]["kwargs"]
    if isinstance(kw, str):
        kw = FIXTURES[kw]["kwargs"]
    return {**COMMON, **kw}


def init_weights(model: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter with seeded random values of a useful size."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if "norm" in name:
                v = 1.0 + NORM_SPREAD * (2.0 * torch.rand(p.shape, generator=g) - 1.0)
            elif name.endswith(".bias"):
                v = BIAS_STD * torch.randn(p.shape, generator=g)
            elif "embed_tokens" in name:
                v = EMBED_STD * torch.randn(p.shape, generator=g)
            elif name.startswith("lm_head"):
                v = LM_HEAD_STD * torch.randn(p.shape, generator=g)
            else:
                v = LINEAR_STD * torch.randn(p.shape, generator=g)
            p.copy_(v.to(p.dtype))


def build_model(name: str) -> torch.nn.Module:
    spec = FIXTURES[name]
    cfg = spec["config"](**spec_kwargs(name))
    cfg._attn_implementation = "eager"
    torch.manual_seed(spec["seed"])
    model = spec["model"](cfg).to(torch.float32).eval()
    init_weights(model, spec["seed"])
    if spec["dtype"] == "bfloat16":
        # Round to bf16 and back: the float32 reference is then exact for the stored weights.
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
    return model


def generation_config() -> GenerationConfig:
    return GenerationConfig(
        do_sample=False, bos_token_id=None, eos_token_id=None, pad_token_id=None,
        max_new_tokens=MAX_NEW_TOKENS,
    )


@torch.no_grad()
def full_logits(model, ids: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(ids).long()[None]
    return model(x).logits[0].to(torch.float32).numpy()


@torch.no_grad()
def greedy(model, ids: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(ids).long()[None]
    out = model.generate(
        x, attention_mask=torch.ones_like(x), generation_config=generation_config()
    )
    return out[0, len(ids):].numpy().astype(np.int64)


@torch.no_grad()
def greedy_margin(model, ids: np.ndarray, new: np.ndarray) -> float:
    """Smallest top-1 minus top-2 gap at every step of the greedy path (checked by full
    recompute, which must agree with generate())."""
    seq = np.concatenate([ids, new])
    logits = full_logits(model, seq)
    steps = logits[len(ids) - 1:-1]
    assert np.array_equal(steps.argmax(-1), new), "generate() disagrees with full forward argmax"
    top2 = np.sort(steps, axis=-1)[:, -2:]
    return float((top2[:, 1] - top2[:, 0]).min())


def byte_tokenizer_json() -> str:
    """A tiny byte-level BPE tokenizer (256 byte tokens, no merges), ids 0..255."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet(), key=lambda c: c.encode("utf-8"))
    # Order the ids by the byte each symbol stands for.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_to_sym = dict(zip(bs, (chr(c) for c in cs)))
    assert sorted(byte_to_sym.values()) == sorted(alphabet)
    vocab = {byte_to_sym[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok.to_str()


def to_legacy_config(path: Path) -> None:
    """Rewrite config.json the way most published checkpoints spell it (transformers 4.x):
    rope_theta / rope_scaling at top level and torch_dtype instead of rope_parameters / dtype."""
    cfg = json.loads(path.read_text())
    rp = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rp.pop("rope_theta")
    if rp.get("rope_type", "default") == "default":
        cfg["rope_scaling"] = None
    else:
        cfg["rope_scaling"] = rp
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    path.write_text(json.dumps(dict(sorted(cfg.items())), indent=2) + "\n")


def make_prompts(name: str, model, vocab: int) -> list[np.ndarray]:
    spec = FIXTURES[name]
    rng = np.random.default_rng(spec["seed"])
    prompts = []
    for length in spec["prompts"]:
        for _ in range(100):
            ids = rng.integers(0, vocab, size=length, dtype=np.int64)
            if greedy_margin(model, ids, greedy(model, ids)) >= MIN_MARGIN:
                break
        else:
            raise RuntimeError(f"{name}: no prompt of length {length} with a clear greedy path")
        prompts.append(ids)
    return prompts


def write_fixture(name: str) -> None:
    spec = FIXTURES[name]
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)

    model = build_model(name)
    vocab = model.config.vocab_size
    prompts = make_prompts(name, model, vocab)
    ref: dict[str, np.ndarray] = {}
    for i, ids in enumerate(prompts):
        ref[f"input_ids_{i}"] = ids
        ref[f"logits_{i}"] = full_logits(model, ids).astype(np.float32)
        ref[f"greedy_{i}"] = greedy(model, ids)

    model.generation_config = generation_config()
    save_dtype = torch.bfloat16 if spec["dtype"] == "bfloat16" else torch.float32
    model.to(save_dtype)
    model.config.dtype = save_dtype
    kwargs = {}
    if "max_shard_size" in spec:
        kwargs["max_shard_size"] = spec["max_shard_size"]
    model.save_pretrained(d, safe_serialization=True, **kwargs)
    if spec["legacy_config"]:
        to_legacy_config(d / "config.json")
    (d / "tokenizer.json").write_text(byte_tokenizer_json())
    np.savez_compressed(d / "reference.npz", **ref)
    print(f"wrote {d.relative_to(ROOT)}: {sorted(p.name for p in d.iterdir())}")


# ----------------------------------------------------------------------------- checks


def load_fixture(name: str, rope_parameters: dict | None = None):
    spec = FIXTURES[name]
    d = OUT / name
    kwargs = {}
    if rope_parameters is not None:
        cfg = spec["config"].from_pretrained(d)
        cfg.rope_parameters = rope_parameters
        kwargs["config"] = cfg
    model = spec["model"].from_pretrained(
        d, dtype=torch.float32, attn_implementation="eager", **kwargs
    ).eval()
    return model


def check_fixture(name: str) -> None:
    from safetensors import safe_open

    spec = FIXTURES[name]
    d = OUT / name
    ref = dict(np.load(d / "reference.npz"))
    model = load_fixture(name)
    cfg = json.loads((d / "config.json").read_text())

    # 1. exact reproduction of the stored logits and greedy ids
    n = len(spec["prompts"])
    for i in range(n):
        ids = ref[f"input_ids_{i}"]
        got = full_logits(model, ids)
        assert got.dtype == ref[f"logits_{i}"].dtype
        assert np.array_equal(got, ref[f"logits_{i}"]), f"{name}: logits_{i} not reproduced"
        assert np.array_equal(greedy(model, ids), ref[f"greedy_{i}"]), f"{name}: greedy_{i}"
    margins = [greedy_margin(model, ref[f"input_ids_{i}"], ref[f"greedy_{i}"]) for i in range(n)]
    spread = float(np.std(ref[f"logits_{n - 1}"]))

    # 2. the reloaded model equals the freshly built one (config read back correctly)
    fresh = build_model(name)
    ids = ref[f"input_ids_{n - 1}"]
    assert np.array_equal(full_logits(fresh, ids), ref[f"logits_{n - 1}"]), f"{name}: rebuild"

    # 3. stored tensors
    files = sorted(d.glob("*.safetensors"))
    names, dtypes = [], set()
    for f in files:
        with safe_open(f, "np" if spec["dtype"] != "bfloat16" else "pt") as sf:
            for k in sf.keys():
                names.append(k)
                dtypes.add(str(sf.get_slice(k).get_dtype()))
    tied = cfg["tie_word_embeddings"]
    assert ("lm_head.weight" in names) == (not tied), f"{name}: lm_head.weight presence"
    want = "BF16" if spec["dtype"] == "bfloat16" else "F32"
    assert dtypes == {want}, f"{name}: stored dtypes {dtypes}"
    if "max_shard_size" in spec:
        assert len(files) >= 2 and (d / "model.safetensors.index.json").exists()
    extra = ""
    if name == "tiny_qwen2":
        with safe_open(d / "model.safetensors", "np") as sf:
            biases = [k for k in sf.keys() if k.endswith(".bias")]
            assert len(biases) == 6, biases
            for k in biases:
                assert np.abs(sf.get_tensor(k)).min() > 0 and np.abs(sf.get_tensor(k)).std() > 0.1
        extra = f", {len(biases)} non-zero q/k/v biases"

    # 4. llama3 rope scaling must matter (so a missing scaling is caught)
    if name == "tiny_llama3":
        unscaled = load_fixture(name, {"rope_type": "default", "rope_theta": 500000.0})
        assert unscaled.config.rope_parameters.get("rope_type", "default") == "default", (
            unscaled.config.rope_parameters
        )
        assert unscaled.config.rope_parameters["rope_theta"] == 500000.0
        long_i = int(np.argmax([len(ref[f"input_ids_{i}"]) for i in range(n)]))
        ids = ref[f"input_ids_{long_i}"]
        a, b = ref[f"logits_{long_i}"], full_logits(unscaled, ids)
        diff = np.abs(a - b)
        late = diff[65:].max(axis=-1)
        assert late.min() > 1e-2, f"llama3 scaling barely matters at some late positions: {late}"
        extra = (
            f", without llama3 scaling: max|dlogit| pos>64 = {diff[65:].max():.3f}"
            f" (min over pos>64 of per-position max = {late.min():.3f}),"
            f" argmax changes at {int((a[65:].argmax(-1) != b[65:].argmax(-1)).sum())}"
            f"/{len(a) - 65} of those positions"
        )
    print(
        f"ok {name}: {len(files)} safetensors file(s), {len(names)} tensors, {sorted(dtypes)}, "
        f"logit std {spread:.2f}, min greedy margin {min(margins):.3f}{extra}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only verify existing fixtures")
    ap.add_argument("names", nargs="*", help="fixtures to handle (default: all)")
    args = ap.parse_args()
    names = args.names or list(FIXTURES)
    torch.set_num_threads(1)  # bit-reproducible CPU reductions
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, numpy {np.__version__}")
    if not args.check:
        for name in names:
            write_fixture(name)
    for name in names:
        check_fixture(name)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
