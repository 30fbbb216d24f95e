"""Convert a llama-architecture GGUF file into a Hugging Face-layout model directory.

The output directory holds config.json, generation_config.json, tokenizer.json,
tokenizer_config.json, special_tokens_map.json and model.safetensors, laid out the way
`transformers` writes a LlamaForCausalLM checkpoint, so both rawengine and transformers can load it.

What the conversion does:

* every tensor is dequantized to float32 with the `gguf` package (an optional dependency:
  ``pip install gguf``), then stored as float16 (or float32 where float16 would overflow, or when
  asked for);
* GGUF lists dimensions fastest-first; the numpy arrays here are reshaped to the reverse of that
  list, which is the HF order ([out_features, in_features] for linear weights);
* llama.cpp's converter reorders the rows of the Q and K projections so that the two halves of each
  rotary pair sit next to each other (GGUF row ``2*j + s`` of a head holds HF row
  ``s*head_dim/2 + j``);
  :func:`unpermute_qk` undoes that;
* the tokenizer is rebuilt as a byte-level BPE from the vocabulary and merges in the file.

The result is written into a temporary directory beside the target and renamed into place at the
end, so an interrupted conversion never leaves a half-written model directory behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RawEngineError

Progress = Callable[[str], None]

FLOAT16_MAX = float(np.finfo(np.float16).max)

# GGUF token types (llama.cpp's llama_token_type)
_TOKEN_NORMAL, _TOKEN_UNKNOWN, _TOKEN_CONTROL, _TOKEN_USER_DEFINED, _TOKEN_UNUSED, _TOKEN_BYTE = (
    1,
    2,
    3,
    4,
    5,
    6,
)

_LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_GLOBAL_RE = re.compile(r"^([a-z_]+)\.(weight|bias)$")
# Precomputed rope tables (llama 3.1-style or long-rope scaling): no plain-llama HF equivalent.
_ROPE_TABLES = {"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"}


def _import_gguf():
    try:
        import gguf
        import gguf.quants
    except ImportError:
        raise RawEngineError(
            "converting a GGUF file needs the 'gguf' package: pip install gguf "
            "(or pip install 'rawengine[convert]')"
        ) from None
    return gguf


# --------------------------------------------------------------------------------------------
# Q/K row order


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder Q/K rows from HF's rotary layout into llama.cpp's (what its converter does).

    Within each head of ``head_dim`` rows, HF row ``s*head_dim/2 + j`` (s in {0, 1}) moves to row
    ``2*j + s``: the two halves that HF's rotate_half pairs up become adjacent rows.
    """
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"{rows} rows cannot be split into {n_head} heads of even size")
    half = rows // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of :func:`permute_qk`: GGUF row ``2*j + s`` of a head goes back to row
    ``s*head_dim/2 + j``."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"{rows} rows cannot be split into {n_head} heads of even size")
    half = rows // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --------------------------------------------------------------------------------------------
# GGUF metadata


def _field_value(gguf, field) -> Any:
    """The python value of a GGUFReader field: str, int, float, bool, or a list of those."""
    vt = gguf.GGUFValueType
    types = list(field.types)
    if not types:
        return None

    def scalar(kind, part):
        if kind == vt.STRING:
            return bytes(part).decode("utf-8", errors="replace")
        v = part[0] if len(part) else None
        if kind == vt.BOOL:
            return bool(v)
        if kind in (vt.FLOAT32, vt.FLOAT64):
            return float(v)
        return int(v)

    if types[0] == vt.ARRAY:
        if len(types) < 2 or types[1] == vt.ARRAY:
            return None  # nested arrays: nothing here needs them
        # field.data indexes the parts that hold the elements, one part per element
        return [scalar(types[1], field.parts[i]) for i in field.data]
    return scalar(types[0], field.parts[field.data[0]])


def read_metadata(reader, gguf=None) -> dict[str, Any]:
    """All key/value metadata of an opened GGUFReader as plain python values."""
    gguf = gguf or _import_gguf()
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        out[key] = _field_value(gguf, field)
    return out


def _f32_to_float(v: float) -> float:
    """A float32 from the file as the shortest decimal that rounds to it (1e-05, not 9.99e-06)."""
    return float(str(np.float32(v)))


def _hf_config(meta: dict[str, Any], n_vocab: int, tied: bool, dtype: str) -> dict[str, Any]:
    arch = meta.get("general.architecture")

    def need(key):
        full = f"{arch}.{key}"
        if full not in meta:
            raise RawEngineError(f"GGUF metadata has no {full}")
        return meta[full]

    def opt(key, default=None):
        return meta.get(f"{arch}.{key}", default)

    hidden = int(need("embedding_length"))
    n_head = int(need("attention.head_count"))
    n_head_kv = opt("attention.head_count_kv", n_head)
    if isinstance(n_head_kv, list):
        raise RawEngineError("per-layer key/value head counts are not supported")
    head_dim = int(opt("attention.key_length") or hidden // n_head)
    rope_dim = opt("rope.dimension_count")
    if rope_dim and int(rope_dim) != head_dim:
        raise RawEngineError(
            f"partial rotary embeddings ({rope_dim} of {head_dim} dims) are not supported"
        )
    eps = opt("attention.layer_norm_rms_epsilon", 1e-5)
    theta = opt("rope.freq_base", 10000.0)
    cfg: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": n_vocab,
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(n_head_kv),
        "head_dim": int(head_dim),
        "hidden_act": "silu",
        "rms_norm_eps": _f32_to_float(eps),
        "rope_theta": _f32_to_float(theta),
        "rope_scaling": None,
        "max_position_embeddings": int(opt("context_length", 2048)),
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "tie_word_embeddings": bool(tied),
        "torch_dtype": dtype,
    }
    scaling = opt("rope.scaling.type")
    if scaling and scaling != "none":
        if scaling == "linear" and opt("rope.scaling.factor"):
            cfg["rope_scaling"] = {
                "type": "linear",
                "factor": _f32_to_float(opt("rope.scaling.factor")),
            }
        else:
            raise RawEngineError(
                f"GGUF rope scaling {scaling!r} is not supported by this converter"
            )
    for name in ("bos", "eos", "padding"):
        tid = meta.get(f"tokenizer.ggml.{name}_token_id")
        if tid is not None:
            cfg["pad_token_id" if name == "padding" else f"{name}_token_id"] = int(tid)
    return cfg


def _generation_config(meta: dict[str, Any]) -> dict[str, Any]:
    gen: dict[str, Any] = {}
    for name in ("bos", "eos", "padding"):
        tid = meta.get(f"tokenizer.ggml.{name}_token_id")
        if tid is not None:
            gen["pad_token_id" if name == "padding" else f"{name}_token_id"] = int(tid)
    # newer GGUF files may carry the model's recommended sampling settings
    for key, hf in (("top_k", "top_k"), ("top_p", "top_p"), ("temp", "temperature")):
        v = meta.get(f"general.sampling.{key}")
        if v is not None:
            gen[hf] = _f32_to_float(v) if isinstance(v, float) else v
            gen["do_sample"] = True
    return gen


# --------------------------------------------------------------------------------------------
# tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


# Split patterns for pre-tokenizer types whose words are not GPT-2's.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _pre_tokenizer(pre: str | None):
    from tokenizers import Regex, pre_tokenizers

    if pre == "smollm":
        # every digit on its own, then GPT-2's words; this is how SmolLM's vocabulary was trained
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )
    if pre in (None, "default", "gpt2", "gpt-2"):
        return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre in ("llama-bpe", "llama3", "llama-v3", "smaug-bpe", "falcon3"):
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(
                    add_prefix_space=False, trim_offsets=True, use_regex=False
                ),
            ]
        )
    raise RawEngineError(
        f"GGUF pre-tokenizer {pre!r} is not supported by this converter "
        "(supported: smollm, gpt2/default, llama-bpe)"
    )


def build_tokenizer(meta: dict[str, Any]):
    """A `tokenizers.Tokenizer` (byte-level BPE) rebuilt from the GGUF vocabulary and merges."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise RawEngineError(
            f"GGUF tokenizer model {model!r} is not supported: only byte-level BPE ('gpt2') is"
        )
    tokens: list[str] = meta.get("tokenizer.ggml.tokens") or []
    merges_raw: list[str] = meta.get("tokenizer.ggml.merges") or []
    if not tokens or not merges_raw:
        raise RawEngineError("GGUF file has no tokenizer vocabulary or merges")
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [_TOKEN_NORMAL] * len(tokens)

    alphabet = set(_bytes_to_unicode().values())
    spell = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for i, (tok, kind) in enumerate(zip(tokens, types)):
        if (
            kind in (_TOKEN_NORMAL, _TOKEN_BYTE, _TOKEN_UNUSED, _TOKEN_UNKNOWN)
            and not set(tok) <= alphabet
        ):
            # a normal token should already be in the byte alphabet; re-spell it if not
            tok = "".join(spell[b] for b in tok.encode("utf-8"))
        vocab.setdefault(tok, i)
    merges = []
    for m in merges_raw:
        a, sep, b = m.partition(" ")
        if not sep:
            raise RawEngineError(f"malformed merge in GGUF file: {m!r}")
        merges.append((a, b))

    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False, dropout=None)
    )
    tok.normalizer = None
    tok.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre"))
    tok.decoder = decoders.ByteLevel()

    bos_id = meta.get("tokenizer.ggml.bos_token_id")
    eos_id = meta.get("tokenizer.ggml.eos_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and bos_id is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos_id is not None
    if add_bos or add_eos:
        bos = [f"{tokens[bos_id]}:0"] if add_bos else []
        eos = [f"{tokens[eos_id]}:0"] if add_eos else []
        ids = ({bos_id} if add_bos else set()) | ({eos_id} if add_eos else set())
        special = [(tokens[i], i) for i in sorted(ids)]
        tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single=" ".join(bos + ["$A:0"] + eos),
                    pair=" ".join(
                        bos
                        + ["$A:0"]
                        + eos
                        + [b[:-1] + "1" for b in bos]
                        + ["$B:1"]
                        + [e[:-1] + "1" for e in eos]
                    ),
                    special_tokens=special,
                ),
            ]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)

    # Control tokens (<|im_start|> ...) are matched whole and are special; user-defined ones are
    # matched whole but are ordinary text when decoding.
    added = [
        AddedToken(
            t,
            special=(k == _TOKEN_CONTROL),
            normalized=False,
            lstrip=False,
            rstrip=False,
            single_word=False,
        )
        for t, k in zip(tokens, types)
        if k in (_TOKEN_CONTROL, _TOKEN_USER_DEFINED)
    ]
    tok.add_special_tokens([a for a in added if a.special])
    tok.add_tokens([a for a in added if not a.special])
    for a in added:
        if tok.token_to_id(a.content) != tokens.index(a.content):
            raise RawEngineError(f"special token {a.content!r} did not keep its id")
    return tok


def _tokenizer_config(meta: dict[str, Any], ctx: int) -> tuple[dict, dict]:
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [_TOKEN_NORMAL] * len(tokens)

    def token(key):
        tid = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[tid] if tid is not None and 0 <= tid < len(tokens) else None

    special_map = {
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "unk_token": token("unknown"),
        "pad_token": token("padding"),
    }
    special_map = {k: v for k, v in special_map.items() if v is not None}
    named = set(special_map.values())
    extra = [t for t, k in zip(tokens, types) if k == _TOKEN_CONTROL and t not in named]
    added_decoder = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": k == _TOKEN_CONTROL,
        }
        for i, (t, k) in enumerate(zip(tokens, types))
        if k in (_TOKEN_CONTROL, _TOKEN_USER_DEFINED)
    }
    cfg: dict[str, Any] = {
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "add_prefix_space": bool(meta.get("tokenizer.ggml.add_space_prefix", False)),
        "added_tokens_decoder": added_decoder,
        **special_map,
        "additional_special_tokens": extra,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(ctx),
        # not GPT2Tokenizer: transformers 5 would swap tokenizer.json's pre-tokenizer for its own
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    tmpl = meta.get("tokenizer.chat_template")
    if tmpl:
        cfg["chat_template"] = tmpl
    stm = dict(special_map)
    stm["additional_special_tokens"] = extra
    return cfg, stm


# --------------------------------------------------------------------------------------------
# tensors


def hf_tensor_name(gguf_name: str) -> str | None:
    """The HF llama name for a GGUF tensor name."""
    if gguf_name in _ROPE_TABLES:
        raise RawEngineError(f"GGUF tensor {gguf_name!r}: this rope scaling is not supported")
    m = _LAYER_RE.match(gguf_name)
    if m:
        layer, part, kind = m.groups()
        if part not in _LAYER_TENSORS:
            raise RawEngineError(f"unknown GGUF tensor {gguf_name!r}")
        return f"model.layers.{int(layer)}.{_LAYER_TENSORS[part]}.{kind}"
    m = _GLOBAL_RE.match(gguf_name)
    if m and m.group(1) in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[m.group(1)]}.{m.group(2)}"
    raise RawEngineError(f"unknown GGUF tensor {gguf_name!r}")


def _dequantize(gguf, t) -> np.ndarray:
    shape = tuple(int(x) for x in reversed([int(d) for d in t.shape]))
    try:
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
    except NotImplementedError:
        raise RawEngineError(
            f"tensor {t.name}: the installed gguf package cannot dequantize {t.tensor_type.name}"
        ) from None
    arr = np.asarray(arr, dtype=np.float32)
    if arr.size != int(np.prod(shape)):
        raise RawEngineError(f"tensor {t.name}: {arr.size} values for shape {shape}")
    return arr.reshape(shape)


_ST_DTYPES = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32"}


def write_safetensors(
    path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
    """Write a .safetensors file (8-byte little-endian header length, JSON header, raw data)."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    names = sorted(tensors)
    for name in names:
        a = tensors[name]
        nbytes = a.size * a.dtype.itemsize
        header[name] = {
            "dtype": _ST_DTYPES[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in names:
            f.write(
                np.ascontiguousarray(tensors[name])
                .astype(tensors[name].dtype.newbyteorder("<"), copy=False)
                .tobytes()
            )
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------------------------
# conversion


def _say(progress: Progress | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def convert(
    gguf_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    progress: Progress | None = None,
    *,
    dtype: str = "float16",
    overwrite: bool = False,
) -> Path:
    """Convert ``gguf_path`` (llama architecture) into a HF-layout directory ``out_dir``.

    ``dtype`` is "float16" (default: half the size; falls back to float32 if any value would
    overflow) or "float32" (the dequantized values exactly). The directory appears atomically:
    it is built beside ``out_dir`` and renamed at the end. Returns the output path.
    """
    gguf = _import_gguf()
    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    if dtype not in ("float16", "float32"):
        raise RawEngineError(f"dtype must be float16 or float32, not {dtype!r}")
    if not gguf_path.is_file():
        raise RawEngineError(f"no such GGUF file: {gguf_path}")
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise RawEngineError(f"{out_dir} already exists; remove it first (or pass --force)")

    _say(progress, f"reading {gguf_path}")
    try:
        reader = gguf.GGUFReader(str(gguf_path), "r")
    except Exception as e:  # noqa: BLE001 -- corrupt, truncated, or not a GGUF file at all
        raise RawEngineError(f"cannot read GGUF file {gguf_path}: {e}") from None
    meta = read_metadata(reader, gguf)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise RawEngineError(f"{gguf_path}: architecture {arch!r} is not supported (only 'llama')")

    by_name = {t.name: t for t in reader.tensors}
    tied = "output.weight" not in by_name
    if "token_embd.weight" not in by_name:
        raise RawEngineError(f"{gguf_path}: no token_embd.weight tensor")
    n_vocab = int(by_name["token_embd.weight"].shape[1])  # GGUF order: [hidden, vocab]
    cfg = _hf_config(meta, n_vocab, tied, dtype)
    n_head, n_head_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    # ---- tensors
    tensors: dict[str, np.ndarray] = {}
    total = len(reader.tensors)
    _say(progress, f"dequantizing {total} tensors")
    for i, t in enumerate(reader.tensors):
        hf = hf_tensor_name(t.name)
        w = _dequantize(gguf, t)
        if ".attn_q." in t.name:
            w = unpermute_qk(w, n_head)
        elif ".attn_k." in t.name:
            w = unpermute_qk(w, n_head_kv)
        if not np.isfinite(w).all():
            raise RawEngineError(f"tensor {t.name} holds NaN or infinite values")
        if hf in tensors:
            raise RawEngineError(f"GGUF file holds {t.name} twice")
        tensors[hf] = w
        if progress is not None and ((i + 1) % 50 == 0 or i + 1 == total):
            progress(f"  {i + 1}/{total} tensors")
    _check_tensors(tensors, cfg)

    out_dtype = np.float16 if dtype == "float16" else np.float32
    if out_dtype == np.float16:
        peak = max(float(np.abs(w).max()) for w in tensors.values())
        if peak > FLOAT16_MAX:
            _say(progress, f"largest |value| {peak:g} overflows float16: storing float32")
            out_dtype = np.float32
            cfg["torch_dtype"] = "float32"
    tensors = {k: v.astype(out_dtype) for k, v in tensors.items()}

    # ---- tokenizer
    _say(progress, "building tokenizer")
    tokenizer = build_tokenizer(meta)
    tok_cfg, special_map = _tokenizer_config(meta, cfg["max_position_embeddings"])

    # ---- write everything into a temp dir beside the target, then rename
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; give it normal permissions
        _write_json(tmp / "config.json", cfg)
        _write_json(tmp / "generation_config.json", _generation_config(meta))
        tokenizer.save(str(tmp / "tokenizer.json"))
        _write_json(tmp / "tokenizer_config.json", tok_cfg)
        _write_json(tmp / "special_tokens_map.json", special_map)
        nbytes = sum(v.nbytes for v in tensors.values())
        _say(
            progress,
            f"writing model.safetensors ({nbytes / 2**20:.0f} MiB, {np.dtype(out_dtype).name})",
        )
        write_safetensors(
            tmp / "model.safetensors",
            tensors,
            {"format": "pt", "source": f"gguf:{gguf_path.name}"},
        )
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _say(progress, f"wrote {out_dir}")
    return out_dir


def _check_tensors(tensors: dict[str, np.ndarray], cfg: dict[str, Any]) -> None:
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    want = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not cfg["tie_word_embeddings"]:
        want["lm_head.weight"] = (v, h)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        want.update(
            {
                p + "self_attn.q_proj.weight": (q, h),
                p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h),
                p + "self_attn.o_proj.weight": (h, q),
                p + "mlp.gate_proj.weight": (inter, h),
                p + "mlp.up_proj.weight": (inter, h),
                p + "mlp.down_proj.weight": (h, inter),
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
            }
        )
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    if missing:
        raise RawEngineError(f"GGUF file lacks {len(missing)} tensors, e.g. {missing[0]}")
    if extra:
        raise RawEngineError(f"GGUF file has unexpected tensors, e.g. {extra[0]}")
    for name, shape in want.items():
        if tuple(tensors[name].shape) != shape:
            raise RawEngineError(f"{name} has shape {tuple(tensors[name].shape)}, expected {shape}")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished directory ``src`` to ``dst``; an old ``dst`` is removed only afterwards."""
    old = None
    if dst.exists() or dst.is_symlink():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        if old is not None:
            os.replace(old, dst)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def iter_summary(out_dir: str | os.PathLike) -> Iterable[str]:
    """Lines describing a converted directory (used by the CLI at the end)."""
    cfg = json.loads((Path(out_dir) / "config.json").read_text())
    yield (
        f"{cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, heads "
        f"{cfg['num_attention_heads']}/{cfg['num_key_value_heads']}, vocab {cfg['vocab_size']}, "
        f"{cfg['torch_dtype']}"
    )
