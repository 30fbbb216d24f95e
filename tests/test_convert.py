"""The GGUF converter (rawengine.gguf_convert) and model resolution (rawengine.hub).

Needs only numpy, safetensors, tokenizers, jinja2 and the optional `gguf` package -- no torch.
The checks on the real converted model skip when weights/smollm2-135m-instruct is absent
(`rawengine download` or `python tools/convert_gguf.py FILE.gguf weights/smollm2-135m-instruct`
makes it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rawengine.errors import RawEngineError
from rawengine.gguf_convert import hf_tensor_name, permute_qk, unpermute_qk

REPO = Path(__file__).resolve().parent.parent
GOLDEN_PATH = REPO / "tests" / "fixtures" / "smollm2_golden.json"


# ----------------------------------------------------------------------------------------------
# Q/K row order


def _llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter: per head, rows viewed as (2, head_dim/2) become (head_dim/2, 2)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


@pytest.mark.parametrize("n_head,head_dim,cols", [(9, 64, 576), (3, 64, 576), (4, 8, 5), (1, 6, 3)])
def test_unpermute_inverts_llamacpp_permutation(n_head, head_dim, cols):
    rng = np.random.default_rng(n_head * 1000 + head_dim)
    w = rng.standard_normal((n_head * head_dim, cols)).astype(np.float32)
    g = _llamacpp_permute(w, n_head)
    assert not np.array_equal(g, w)
    np.testing.assert_array_equal(unpermute_qk(g, n_head), w)
    np.testing.assert_array_equal(permute_qk(w, n_head), g)
    # the row mapping spelled out: GGUF row 2*j + s of head h is HF row s*head_dim/2 + j
    half = head_dim // 2
    for h in range(n_head):
        for j in range(half):
            for s in (0, 1):
                np.testing.assert_array_equal(
                    g[h * head_dim + 2 * j + s], w[h * head_dim + s * half + j]
                )


def test_unpermute_bias_vector():
    v = np.arange(3 * 8, dtype=np.float32)
    np.testing.assert_array_equal(unpermute_qk(_llamacpp_permute(v, 3), 3), v)


def test_unpermute_rejects_odd_heads():
    with pytest.raises(ValueError):
        unpermute_qk(np.zeros((9, 4), np.float32), 3)


def test_tensor_names():
    assert hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_tensor_name("output_norm.weight") == "model.norm.weight"
    assert hf_tensor_name("output.weight") == "lm_head.weight"
    assert hf_tensor_name("blk.7.attn_q.weight") == "model.layers.7.self_attn.q_proj.weight"
    assert hf_tensor_name("blk.0.attn_k.weight") == "model.layers.0.self_attn.k_proj.weight"
    assert hf_tensor_name("blk.0.attn_v.weight") == "model.layers.0.self_attn.v_proj.weight"
    assert hf_tensor_name("blk.0.attn_output.weight") == "model.layers.0.self_attn.o_proj.weight"
    assert hf_tensor_name("blk.12.ffn_gate.weight") == "model.layers.12.mlp.gate_proj.weight"
    assert hf_tensor_name("blk.12.ffn_up.weight") == "model.layers.12.mlp.up_proj.weight"
    assert hf_tensor_name("blk.12.ffn_down.weight") == "model.layers.12.mlp.down_proj.weight"
    assert hf_tensor_name("blk.3.attn_norm.weight") == "model.layers.3.input_layernorm.weight"
    assert (
        hf_tensor_name("blk.3.ffn_norm.weight") == "model.layers.3.post_attention_layernorm.weight"
    )
    with pytest.raises(RawEngineError, match="rope scaling"):
        hf_tensor_name("rope_freqs.weight")
    with pytest.raises(RawEngineError):
        hf_tensor_name("blk.0.ffn_gate_exps.weight")


# ----------------------------------------------------------------------------------------------
# a tiny synthetic GGUF, converted end to end


def _byte_alphabet() -> list[str]:
    from rawengine.gguf_convert import _bytes_to_unicode

    return [_bytes_to_unicode()[b] for b in range(256)]


TINY = {"hidden": 16, "inter": 24, "layers": 2, "heads": 4, "kv": 2, "head_dim": 4}


def _write_tiny_gguf(path: Path, *, tied: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """A llama GGUF written the way llama.cpp's converter would, from known HF tensors."""
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(seed)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["Ġ t", "h e", "Ġt he", "1 2"]
    tokens = specials + _byte_alphabet() + ["Ġt", "he", "Ġthe", "12"]
    types = [3] * len(specials) + [1] * (len(tokens) - len(specials))
    h, inter, nh, nkv, hd = (
        TINY["hidden"],
        TINY["inter"],
        TINY["heads"],
        TINY["kv"],
        TINY["head_dim"],
    )
    v = len(tokens)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    hf = {"model.embed_tokens.weight": r(v, h), "model.norm.weight": r(h)}
    if not tied:
        hf["lm_head.weight"] = r(v, h)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(TINY["layers"])
    w.add_context_length(128)
    w.add_embedding_length(h)
    w.add_feed_forward_length(inter)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(hd)
    w.add_vocab_size(v)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(
        "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    )
    w.add_tensor("token_embd.weight", hf["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", hf["model.norm.weight"])
    if not tied:
        w.add_tensor("output.weight", hf["lm_head.weight"])
    for i in range(TINY["layers"]):
        p = f"model.layers.{i}."
        layer = {
            "attn_q": ("self_attn.q_proj", r(nh * hd, h)),
            "attn_k": ("self_attn.k_proj", r(nkv * hd, h)),
            "attn_v": ("self_attn.v_proj", r(nkv * hd, h)),
            "attn_output": ("self_attn.o_proj", r(h, nh * hd)),
            "ffn_gate": ("mlp.gate_proj", r(inter, h)),
            "ffn_up": ("mlp.up_proj", r(inter, h)),
            "ffn_down": ("mlp.down_proj", r(h, inter)),
            "attn_norm": ("input_layernorm", r(h)),
            "ffn_norm": ("post_attention_layernorm", r(h)),
        }
        for gname, (hname, arr) in layer.items():
            hf[p + hname + ".weight"] = arr
            stored = arr
            if gname == "attn_q":
                stored = _llamacpp_permute(arr, nh)
            elif gname == "attn_k":
                stored = _llamacpp_permute(arr, nkv)
            if gname == "ffn_up":  # one half-precision tensor, like many GGUF files have
                stored = stored.astype(np.float16)
                hf[p + hname + ".weight"] = stored.astype(np.float32)
            w.add_tensor(f"blk.{i}.{gname}.weight", stored)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf


@pytest.mark.parametrize("tied", [True, False])
def test_convert_tiny_gguf_roundtrip(tmp_path, tied):
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    from rawengine.gguf_convert import convert

    src = tmp_path / "tiny.gguf"
    hf = _write_tiny_gguf(src, tied=tied)
    out = tmp_path / "out"
    msgs: list[str] = []
    assert convert(src, out, progress=msgs.append, dtype="float32") == out
    assert msgs and any("tokenizer" in m for m in msgs)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp dir left behind"

    got = load_file(str(out / "model.safetensors"))
    assert set(got) == set(hf)
    for k in hf:
        assert got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], hf[k], err_msg=k)

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]) == (16, 24, 2)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (4, 2, 4)
    assert cfg["rope_theta"] == 500000.0 and cfg["rms_norm_eps"] == 1e-6
    assert cfg["max_position_embeddings"] == 128 and cfg["tie_word_embeddings"] is tied
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.encode(" the").ids == [tok.token_to_id("Ġthe")]
    # digits are split one by one before BPE (SmolLM's pre-tokenizer), so "12" never merges
    assert tok.encode("12").ids == [tok.token_to_id("1"), tok.token_to_id("2")]
    assert tok.encode("<|im_start|>the<|im_end|>").ids[0] == 1
    assert tok.decode(tok.encode("<|im_end|>").ids, skip_special_tokens=True) == ""
    for s in ["the theater", "é 🎉 中", "  x\n\t12"]:
        assert tok.decode(tok.encode(s).ids) == s
    tcfg = json.loads((out / "tokenizer_config.json").read_text())
    assert (tcfg["bos_token"], tcfg["eos_token"], tcfg["pad_token"]) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
    )
    assert tcfg["add_bos_token"] is False and "chat_template" in tcfg


def test_convert_float16_and_refusals(tmp_path):
    from safetensors import safe_open

    from rawengine.gguf_convert import convert

    src = tmp_path / "tiny.gguf"
    hf = _write_tiny_gguf(src, tied=True, seed=1)
    out = convert(src, tmp_path / "m")
    with safe_open(str(out / "model.safetensors"), framework="numpy") as f:
        for k in f.keys():  # noqa: SIM118 -- safe_open is not a mapping
            a = f.get_tensor(k)
            assert a.dtype == np.float16
            np.testing.assert_allclose(a.astype(np.float32), hf[k], rtol=1e-3, atol=1e-6)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"
    with pytest.raises(RawEngineError, match="already exists"):
        convert(src, out)
    convert(src, out, overwrite=True)  # replaces it
    with pytest.raises(RawEngineError, match="no such GGUF"):
        convert(tmp_path / "missing.gguf", tmp_path / "x")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(RawEngineError):
        convert(bad, tmp_path / "y")
    assert not (tmp_path / "y").exists()


# ----------------------------------------------------------------------------------------------
# the real converted SmolLM2-135M-Instruct


@pytest.fixture(scope="module")
def smollm2(default_model_dir) -> Path:
    return default_model_dir


@pytest.fixture(scope="module")
def golden() -> dict:
    if not GOLDEN_PATH.is_file():
        pytest.skip(f"{GOLDEN_PATH} is absent (tools/make_golden.py writes it)")
    return json.loads(GOLDEN_PATH.read_text(encoding="utf-8"))


def test_smollm2_config(smollm2):
    cfg = json.loads((smollm2 / "config.json").read_text())
    want = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "max_position_embeddings": 8192,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    assert {k: cfg.get(k) for k in want} == want
    assert cfg["torch_dtype"] in ("float16", "float32")
    gen = json.loads((smollm2 / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2 and gen["bos_token_id"] == 1


def test_smollm2_tensors(smollm2):
    from safetensors import safe_open

    cfg = json.loads((smollm2 / "config.json").read_text())
    dtype = np.dtype(cfg["torch_dtype"])
    with safe_open(str(smollm2 / "model.safetensors"), framework="numpy") as f:
        names = set(f.keys())
        assert len(names) == 2 + 30 * 9
        assert "lm_head.weight" not in names  # tied
        shapes = {
            "model.embed_tokens.weight": (49152, 576),
            "model.norm.weight": (576,),
            "model.layers.0.self_attn.q_proj.weight": (576, 576),
            "model.layers.0.self_attn.k_proj.weight": (192, 576),
            "model.layers.0.self_attn.v_proj.weight": (192, 576),
            "model.layers.0.self_attn.o_proj.weight": (576, 576),
            "model.layers.29.mlp.gate_proj.weight": (1536, 576),
            "model.layers.29.mlp.up_proj.weight": (1536, 576),
            "model.layers.29.mlp.down_proj.weight": (576, 1536),
            "model.layers.29.input_layernorm.weight": (576,),
            "model.layers.29.post_attention_layernorm.weight": (576,),
        }
        for name, shape in shapes.items():
            assert name in names, name
            assert tuple(f.get_slice(name).get_shape()) == shape, name
        for i in range(30):
            for part in (
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
                "input_layernorm",
                "post_attention_layernorm",
            ):
                assert f"model.layers.{i}.{part}.weight" in names
        for name in (
            "model.embed_tokens.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.norm.weight",
        ):
            a = f.get_tensor(name)
            assert a.dtype == dtype and np.isfinite(a).all() and np.abs(a).max() > 0


def test_smollm2_tokenizer_roundtrip(smollm2):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(smollm2 / "tokenizer.json"))
    assert tok.get_vocab_size() == 49152
    for i, t in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]):
        assert tok.token_to_id(t) == i
        assert tok.encode(t).ids == [i]
    strings = [
        "Hello, world!",
        "  leading and trailing  ",
        "tabs\tnew\nlines\r\n\n\n",
        "emoji 🎉🚀👍🏽 and a family 👨‍👩‍👧",
        "中文测试，日本語のテキスト、한국어",
        "def f(x):\n    return x ** 2  # square\n",
        "numbers 12345, 3.14159 and 2024-11-21",
        "Ünïcödé ß Ωμέγα Привет",
        "<|im_start|>user\nhi<|im_end|>\n",
    ]
    for s in strings:
        ids = tok.encode(s).ids
        assert tok.decode(ids, skip_special_tokens=False) == s
    # digits one by one (SmolLM's pre-tokenizer)
    assert [tok.id_to_token(i) for i in tok.encode("2024").ids] == ["2", "0", "2", "4"]
    assert tok.encode("Hello").ids == [19556]
    tcfg = json.loads((smollm2 / "tokenizer_config.json").read_text())
    assert tcfg["bos_token"] == "<|im_start|>" and tcfg["eos_token"] == "<|im_end|>"
    assert tcfg["add_bos_token"] is False
    assert all(v["special"] for v in tcfg["added_tokens_decoder"].values())
    assert len(tcfg["added_tokens_decoder"]) == 17


def _render(template: str, messages: list[dict]) -> str:
    """Render a chat template the way transformers does (sandboxed jinja2, trim/lstrip blocks)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    return env.from_string(template).render(messages=messages, add_generation_prompt=True)


def test_smollm2_golden_prompt_ids(smollm2, golden):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(smollm2 / "tokenizer.json"))
    template = json.loads((smollm2 / "tokenizer_config.json").read_text())["chat_template"]
    cases = golden["cases"]
    assert len(cases) >= 5 and sum(c["chat_template"] for c in cases) >= 2
    for c in cases:
        if c["chat_template"]:
            assert _render(template, [{"role": "user", "content": c["prompt"]}]) == c["rendered"], (
                c["name"]
            )
        else:
            assert c["rendered"] == c["prompt"]
        assert tok.encode(c["rendered"]).ids == c["prompt_ids"], c["name"]
        assert tok.decode(c["generated_ids"], skip_special_tokens=False) == c["generated_text"], c[
            "name"
        ]
        assert len(c["generated_ids"]) >= 32 or c["stopped_at_eos"], c["name"]
        assert (c["generated_ids"][-1] == golden["eos_token_id"]) == c["stopped_at_eos"], c["name"]


# ----------------------------------------------------------------------------------------------
# rawengine.hub without the network


def test_hub_local_name():
    from rawengine.hub import DEFAULT_MODEL, local_name

    assert local_name(DEFAULT_MODEL) == "smollm2-135m-instruct"
    assert local_name("gpt2") == "gpt2"


def test_hub_resolution_offline(tmp_path, monkeypatch):
    from rawengine.hub import resolve_model

    monkeypatch.setenv("RAWENGINE_WEIGHTS_DIR", str(tmp_path / "w"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tmp_path / "mymodel"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert resolve_model(str(model)) == model.resolve()
    with pytest.raises(RawEngineError, match="no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(RawEngineError, match="no such model directory"):
        resolve_model(str(tmp_path / "nope" / "deeper"))
    with pytest.raises(RawEngineError, match="rawengine download"):
        resolve_model("Org/Some-Model", allow_download=False)
    with pytest.raises(RawEngineError, match="HF_HUB_OFFLINE"):
        resolve_model("Org/Some-Model")  # not the default model: no fallback
    installed = tmp_path / "w" / "some-model"
    installed.mkdir(parents=True)
    (installed / "config.json").write_text("{}")
    assert resolve_model("Org/Some-Model", allow_download=False) == installed
