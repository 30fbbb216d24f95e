"""The persistent batch-1 decode step (kernels_cu/decode_step.cu, backends/cuda/decode_step.py).

References: the NumPy float32 engine (same checkpoint bytes) and the unfused CUDA step. Rule
(STYLE.md, at model level): max|fused - ref| <= 2 * max|unfused - ref| + floor, on teacher-forced
decode logits at every step, for contexts that start, cross and end on attention tile (32 keys)
and split boundaries, and long enough that units span several tiles."""

import types

import numpy as np
import pytest

from kutil import has_gpu, write_random_checkpoint  # noqa: E402

if not has_gpu():
    pytest.skip("needs CuPy and a CUDA device", allow_module_level=True)

pytestmark = pytest.mark.gpu

import cupy as cp  # noqa: E402

from rawengine.backends.cuda import decode_step as ds  # noqa: E402
from rawengine.engine import Engine, Sequence  # noqa: E402
from rawengine.sampling import SamplingParams  # noqa: E402

if int(cp.cuda.Device().compute_capability) < 90:
    pytest.skip("the persistent step needs sm_90", allow_module_level=True)


def make_checkpoint(d, **cfg):
    return write_random_checkpoint(d, cfg, seed=1)


BASE = dict(model_type="llama", rms_norm_eps=1e-5, rope_theta=10000.0, torch_dtype="float16",
            max_position_embeddings=4096, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def awkward_d64(tmp_path_factory):
    """hidden 264 (not a multiple of 64), 6/2 heads of 64 (o's K = 384 != hidden), 520
    intermediate, vocab 1003 (a ragged last lm_head block), 3 layers."""
    return make_checkpoint(tmp_path_factory.mktemp("awk64"), **BASE, vocab_size=1003,
                           hidden_size=264, intermediate_size=520, num_hidden_layers=3,
                           num_attention_heads=6, num_key_value_heads=2, head_dim=64)


@pytest.fixture(scope="module")
def awkward_d128(tmp_path_factory):
    """head_dim 128, GQA 4 (8/2 heads), hidden 328, intermediate 712, untied lm_head, 2 layers."""
    cfg = dict(BASE, tie_word_embeddings=False)
    return make_checkpoint(tmp_path_factory.mktemp("awk128"), **cfg, vocab_size=777,
                           hidden_size=328, intermediate_size=712, num_hidden_layers=2,
                           num_attention_heads=8, num_key_value_heads=2, head_dim=128)


def decode_logits(path, device, prompt_len, steps, dtype="float16", fused=True, poison=False,
                  monkeypatch=None):
    """Teacher-forced batch-1 decode of fixed random tokens; logits of every decode step."""
    if monkeypatch is not None:
        monkeypatch.setenv("RAWENGINE_DECODE_STEP", "1" if fused else "0")
    kw = {} if device == "cpu" else dict(dtype=dtype)
    e = Engine(path, device=device, max_model_len=2048, max_num_seqs=1, **kw)
    vocab = e.cfg.vocab_size
    rng = np.random.default_rng(prompt_len)
    seq = Sequence(rng.integers(0, vocab, prompt_len).tolist(), SamplingParams(temperature=0.0))
    e.prefill(seq)
    rows = []
    for _ in range(steps):
        seq.token_ids.append(int(rng.integers(0, vocab)))
        if poison:  # all-ones bytes: NaN in fp16, bf16 and fp32
            step = e.backend._decode_steps.get(e.model)
            if step is not None:
                for a in (step.resid, step.y, step.qkv, step.act, step.part_o, step.part_ml):
                    a.view(np.uint8).fill(0xFF)
        rows.append(e.backend.to_numpy(e.forward([seq], [1]))[0])
    used = device != "cpu" and e.backend._decode_steps.get(e.model) is not None
    return np.stack(rows).astype(np.float32), used


# prompt lengths: first decode key at 2 (one tile), on / across a tile boundary (32), a split
# boundary with several tiles per unit (1500 keys: 47 tiles over 44 units of 2 tiles)
CASES = [(1, 6), (30, 5), (32, 3), (200, 3), (1500, 3)]


@pytest.mark.parametrize("prompt_len,steps", CASES)
def test_fused_step_matches_reference(smollm2_shaped, prompt_len, steps, monkeypatch):
    ref, _ = decode_logits(smollm2_shaped, "cpu", prompt_len, steps)
    fused, used = decode_logits(smollm2_shaped, "cuda", prompt_len, steps, monkeypatch=monkeypatch)
    assert used, "the persistent step did not run"
    unfused, used = decode_logits(smollm2_shaped, "cuda", prompt_len, steps, fused=False,
                                  monkeypatch=monkeypatch)
    assert not used
    assert np.isfinite(fused).all()
    err, base = np.abs(fused - ref).max(), np.abs(unfused - ref).max()
    assert err <= 2 * base + 1e-3 * np.abs(ref).max(), (err, base)


@pytest.mark.parametrize("fixture", ["awkward_d64", "awkward_d128"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_fused_step_awkward_shapes(request, fixture, dtype, monkeypatch):
    path = request.getfixturevalue(fixture)
    for prompt_len in (3, 33, 700):
        ref, _ = decode_logits(path, "cpu", prompt_len, 3)
        fused, used = decode_logits(path, "cuda", prompt_len, 3, dtype, monkeypatch=monkeypatch)
        assert used
        unfused, _ = decode_logits(path, "cuda", prompt_len, 3, dtype, fused=False,
                                   monkeypatch=monkeypatch)
        err, base = np.abs(fused - ref).max(), np.abs(unfused - ref).max()
        assert np.isfinite(fused).all() and err <= 2 * base + 1e-3 * np.abs(ref).max(), \
            (prompt_len, err, base)


def test_scratch_is_written_before_read(smollm2_shaped, monkeypatch):
    """NaN in every scratch buffer before each step changes nothing, bit for bit."""
    clean, _ = decode_logits(smollm2_shaped, "cuda", 40, 4, monkeypatch=monkeypatch)
    poisoned, used = decode_logits(smollm2_shaped, "cuda", 40, 4, poison=True,
                                   monkeypatch=monkeypatch)
    assert used
    np.testing.assert_array_equal(clean, poisoned)


def test_grid_sync_holds_and_resets():
    from rawengine.backends.cuda.attention import num_sms
    from rawengine.backends.cuda.module import kernel

    df = ds.shape_defines(types.SimpleNamespace(
        hidden_size=576, intermediate_size=1536, head_dim=64, num_attention_heads=9,
        num_key_value_heads=3), num_sms())
    fn = kernel("decode_step.cu", "grid_sync_probe_kernel", df)
    grid = num_sms()
    counters = cp.zeros(2, np.uint32)
    for n in (1, 7, 500):
        out = cp.zeros(grid, np.uint32)
        fn((grid,), (ds.NUM_WARPS * 32,), (counters, np.int32(n), out))
        cp.cuda.Device().synchronize()
        assert (out.get() >= n * grid).all()
        assert counters.get().tolist() == [0, 0]


def test_why_not_names_the_reason(monkeypatch):
    monkeypatch.setenv("RAWENGINE_DECODE_STEP", "1")

    def model(layer=None, **over):
        cfg = dict(hidden_size=576, intermediate_size=1536, head_dim=64, num_attention_heads=9,
                   num_key_value_heads=3)
        return types.SimpleNamespace(cfg=types.SimpleNamespace(**{**cfg, **over}),
                                     layers=[layer or {}])

    assert ds.why_not(None, model()) is None
    assert ds.why_not(None, model({"qkv_bias": 0})) == "q/k/v biases"
    assert "head shape" in ds.why_not(None, model(head_dim=96))
    monkeypatch.delenv("RAWENGINE_DECODE_STEP")
    assert "off unless" in ds.why_not(None, model())  # opt-in: slower than the unfused step
    monkeypatch.setenv("RAWENGINE_DECODE_STEP", "1")
    llama1b = model(hidden_size=2048, intermediate_size=8192, head_dim=64,
                    num_attention_heads=32, num_key_value_heads=8)
    assert "shared memory" in ds.why_not(None, llama1b)
    llama8b = model(hidden_size=4096, intermediate_size=14336, head_dim=128,
                    num_attention_heads=32, num_key_value_heads=8)
    assert "hidden" in ds.why_not(None, llama8b)
