"""kernels_cu/decode_attention.cu vs the float32 NumPy reference (2x rule), NaN-poisoned
outputs and unused KV slots, awkward lengths / head dims / GQA groups / page sizes, split vs
single-split, async (unified max) vs sync under adversarial logits, CUDA-graph replay.
The tensor-core kernel (decode_attention_mma.cu, config impl='mma', sync only) and the
cp.async.bulk build of the CUDA-core kernel (config impl='bulk', sync only, sm_90) run the same
reference, split, short-length, graph-replay and early-load checks."""

from __future__ import annotations

import numpy as np
import pytest

from kutil import has_gpu  # noqa: E402

if not has_gpu():
    pytest.skip("needs CuPy and a CUDA device", allow_module_level=True)
import cupy as cp  # noqa: E402

from rawengine.backends.cuda.attention import decode_attention, get_workspace  # noqa: E402
from rawengine.backends.cuda.attention_plan import STEAL_EXTRA  # noqa: E402
from rawengine.kv_cache import visit_order  # noqa: E402

pytestmark = pytest.mark.gpu
LENS = [1, 7, 97, 1025, 4099]


def f32_to_bf16_bits(x):
    """float32 -> bfloat16 bits, round to nearest even (NaN stays NaN)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_bits_to_f32(bits):
    return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32)


def round_to(x, dtype):
    """float32 values of x rounded to the kernel dtype ('fp16' | 'bf16')."""
    x = np.asarray(x, np.float32)
    if dtype == "fp16":
        return x.astype(np.float16).astype(np.float32)
    return bf16_bits_to_f32(f32_to_bf16_bits(x))


def to_device(x, dtype):
    x = np.asarray(x, np.float32)
    host = x.astype(np.float16) if dtype == "fp16" else f32_to_bf16_bits(x)
    return cp.asarray(host)


def from_device(a, dtype):
    h = cp.asnumpy(a)
    return h.astype(np.float32) if dtype == "fp16" else bf16_bits_to_f32(h)


class Case:
    """A ragged batch in a NaN-poisoned paged cache; host copies hold the exact values."""

    def __init__(self, rng, lens, hq, hkv, d, bs, dtype, kv_fn=None, q_fn=None):
        self.lens, self.hq, self.hkv, self.d, self.dtype = lens, hq, hkv, d, dtype
        pages = [-(-n // bs) for n in lens]
        max_blocks = max(pages) + 2
        nb = sum(pages) + 3
        perm = rng.permutation(nb)  # scattered pages, block 0 not special
        tables = np.zeros((len(lens), max_blocks), np.int32)
        kc = np.full((nb, hkv, bs, d), np.nan, np.float32)  # unused slots stay NaN
        vc = kc.copy()
        self.k, self.v, used = [], [], 0
        for b, n in enumerate(lens):
            ids = perm[used:used + pages[b]]
            used += pages[b]
            tables[b, :pages[b]] = ids
            k = kv_fn(rng, n, hkv, d, "k") if kv_fn else rng.standard_normal((n, hkv, d))
            v = kv_fn(rng, n, hkv, d, "v") if kv_fn else rng.standard_normal((n, hkv, d))
            k, v = round_to(k, dtype), round_to(v, dtype)
            self.k.append(k)
            self.v.append(v)
            j = np.arange(n)
            kc[ids[j // bs], :, j % bs] = k  # advanced indices around a slice: [n, Hkv, D]
            vc[ids[j // bs], :, j % bs] = v
        q = q_fn(rng, len(lens), hq, d) if q_fn else rng.standard_normal((len(lens), hq, d))
        self.q = round_to(q, dtype)
        self.q_dev = to_device(self.q, dtype)
        self.k_dev, self.v_dev = to_device(kc, dtype), to_device(vc, dtype)
        self.tables = cp.asarray(tables)
        self.seq_lens = cp.asarray(np.asarray(lens, np.int32))

    def run(self, scale, **kw):
        out = to_device(np.full((len(self.lens), self.hq * self.d), np.nan), self.dtype)
        decode_attention(self.q_dev, self.k_dev, self.v_dev, self.tables, self.seq_lens, scale,
                         max_seq_len=max(self.lens), out=out, **kw)
        return from_device(out, self.dtype).reshape(len(self.lens), self.hq, self.d)

    def reference(self, scale, lowp=False, lens=None):
        """float64 reference; lowp: the same computation rounded to the kernel dtype at each
        stage (scores, probabilities, output), which sets the error budget."""
        g = self.hq // self.hkv
        out = np.zeros((len(self.lens), self.hq, self.d))
        r = (lambda x: round_to(x, self.dtype).astype(np.float64)) if lowp else (lambda x: x)
        for b, n in enumerate(lens or self.lens):
            for h in range(self.hq):
                k = self.k[b][:n, h // g].astype(np.float64)
                v = self.v[b][:n, h // g].astype(np.float64)
                s = r(scale * (k @ self.q[b, h].astype(np.float64)))
                p = r(np.exp(s - s.max()))
                out[b, h] = r(r(p @ v) / p.sum())
        return out


def check(case, out, scale, floor, lens=None):
    ref = case.reference(scale, lens=lens)
    assert np.isfinite(out).all(), "unwritten or NaN output"
    err = np.abs(out - ref).max()
    budget = 2 * np.abs(case.reference(scale, lowp=True, lens=lens) - ref).max() + floor
    assert err <= budget, f"max err {err:.3g} > budget {budget:.3g}"
    return err


FLOOR = {"fp16": 2e-4, "bf16": 2e-3}
# The mma kernel rounds the probabilities p to fp16/bf16 before P V (as FlashAttention does)
# and keeps scores, l and o in fp32. Case.reference(lowp=True) already rounds p (and the
# scores, and the output) to the kernel dtype, so the same 2x rule and floors hold: no wider
# tolerance is needed for bf16.
MMA = dict(impl="mma")  # the tuned tensor-core shape
BULK = dict(impl="bulk")  # the tuned cp.async.bulk shape
STEAL = dict(impl="bulk", steal=1)  # its work-stealing build (decode_attention_dyn_kernel)
# the same two builds with their math on tensor cores (kernels_cu/decode_mma_step.cuh)
BULK_MMA, STEAL_MMA = dict(BULK, mma_math=1), dict(STEAL, mma_math=1)
IMPL_CONFIGS = {"cuda_core": None, "mma": MMA, "bulk": BULK, "steal": STEAL,
                "bulk_mma": BULK_MMA, "steal_mma": STEAL_MMA}
# (variant, impl) pairs that exist: the tensor-core and bulk kernels are sync only
VARIANT_IMPLS = [("sync", "cuda_core"), ("async", "cuda_core"), ("sync", "mma"),
                 ("sync", "bulk"), ("sync", "steal"), ("sync", "bulk_mma"),
                 ("sync", "steal_mma")]


def needs_sm90(impl, d=128):
    if impl.startswith(("bulk", "steal")) and int(cp.cuda.Device().compute_capability) < 90:
        pytest.skip("impl='bulk' needs sm_90")
    if impl.endswith("_mma") and d != 128:
        pytest.skip("bulk mma_math=1 serves head_dim 128")


def ws_slots(splits, impl):
    """Partial-state slots per head block a workspace needs for this split count and impl."""
    return splits + (STEAL_EXTRA if impl.startswith("steal") else 0)


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (6, 2), (8, 2), (16, 2), (32, 2)])  # G 1,3,4,8,16
@pytest.mark.parametrize("bs", [1, 16])
@pytest.mark.parametrize("variant", ["sync", "async"])
def test_matches_reference_fp16(d, hq, hkv, bs, variant):
    rng = np.random.default_rng(hash((d, hq, hkv, bs)) % 2**32)
    case = Case(rng, LENS, hq, hkv, d, bs, "fp16")
    scale = d ** -0.5
    out = case.run(scale, variant=variant, phi=0.0 if variant == "async" else None)
    check(case, out, scale, FLOOR["fp16"])


@pytest.mark.parametrize("d,hq,hkv,bs", [(128, 32, 8, 16), (64, 9, 3, 16), (128, 8, 8, 1)])
@pytest.mark.parametrize("variant", ["sync", "async"])
def test_matches_reference_bf16(d, hq, hkv, bs, variant):
    rng = np.random.default_rng(7)
    case = Case(rng, LENS, hq, hkv, d, bs, "bf16")
    scale = d ** -0.5
    out = case.run(scale, variant=variant, phi=0.0 if variant == "async" else None)
    check(case, out, scale, FLOOR["bf16"])


LENS_MMA = [1, 15, 17, 100, 1000]


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (6, 2), (8, 2), (32, 8), (32, 2)])  # G 1,3,4,4,16
@pytest.mark.parametrize("bs", [1, 16])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_mma_matches_reference(d, hq, hkv, bs, dtype):
    """Tensor-core kernel, planned split count: lengths around the 16-token tile."""
    rng = np.random.default_rng([d, hq, hkv, bs, dtype == "bf16"])
    case = Case(rng, LENS_MMA, hq, hkv, d, bs, dtype)
    scale = d ** -0.5
    out = case.run(scale, config=MMA)
    check(case, out, scale, FLOOR[dtype])


@pytest.mark.parametrize("cfg", [(4, 16, 3, 2), (4, 32, 2, 2), (2, 16, 2, 1), (8, 16, 2, 1),
                                 (4, 16, 4, 1), (1, 32, 3, 2)])
@pytest.mark.parametrize("d,hq,hkv", [(128, 32, 8), (64, 9, 3)])
def test_mma_kernel_shapes(cfg, d, hq, hkv):
    """Every (num_warps, tile, stages, min_blocks) of the tensor-core kernel is correct,
    including the 16-token short-chunk loop of TILE 32 (the 1- and 97-token sequences)."""
    nw, tile, stages, mb = cfg
    rng = np.random.default_rng(19)
    case = Case(rng, [4099, 97, 1, 1025], hq, hkv, d, 16, "fp16")
    scale = d ** -0.5
    out = case.run(scale, config=dict(impl="mma", num_warps=nw, tile=tile, stages=stages,
                                      min_blocks=mb), num_splits=5)
    check(case, out, scale, FLOOR["fp16"])


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (6, 2), (32, 8), (16, 2)])  # G 1, 3, 4, 8
@pytest.mark.parametrize("bs", [1, 4, 16, 64])  # row copies, short runs, page = tile, > tile
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_bulk_matches_reference(d, hq, hkv, bs, dtype):
    """cp.async.bulk rings, planned split count: page sizes below, at and above the warp tile
    (copies of single rows, of runs inside a page, of whole tiles), lengths around a tile."""
    needs_sm90("bulk")
    rng = np.random.default_rng([d, hq, hkv, bs, dtype == "bf16", 5])
    case = Case(rng, [1, 7, 9, 100, 1000, 4099], hq, hkv, d, bs, dtype)
    scale = d ** -0.5
    out = case.run(scale, config=BULK)
    check(case, out, scale, FLOOR[dtype])


@pytest.mark.parametrize("cfg", [(8, 4, 3, 1), (8, 2, 4, 2), (4, 4, 4, 2), (4, 8, 2, 1),
                                 (2, 4, 3, 1), (1, 2, 2, 1)])
@pytest.mark.parametrize("d,hq,hkv", [(128, 32, 8), (64, 9, 3)])
def test_bulk_kernel_shapes(cfg, d, hq, hkv):
    """Every (num_warps, unroll, stages, min_blocks) of the bulk build is correct; 2 warps x
    unroll 4 start their tiles off a page boundary (single-row copies)."""
    needs_sm90("bulk")
    nw, un, st, mb = cfg
    if 32 // (d // 8) * un > 16:
        pytest.skip("more than 16 tokens per warp step")
    rng = np.random.default_rng(37)
    case = Case(rng, [4099, 97, 1, 1025], hq, hkv, d, 16, "fp16")
    scale = d ** -0.5
    out = case.run(scale, config=dict(impl="bulk", num_warps=nw, unroll=un, stages=st,
                                      min_blocks=mb), num_splits=5)
    check(case, out, scale, FLOOR["fp16"])


@pytest.mark.parametrize("d,hq,hkv", [(128, 32, 8), (64, 9, 3), (128, 12, 6), (128, 8, 8)])
@pytest.mark.parametrize("bs", [4, 16, 64])
@pytest.mark.parametrize("splits", [1, 2, 5])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_steal_matches_reference(d, hq, hkv, bs, splits, dtype):
    """Work-stealing build: one long sequence among short ones, so the blocks of the short ones
    finish first and steal tiles of the long one's splits (asserted through the steal count);
    every head of every sequence still matches the reference. Lengths off the tile grid."""
    needs_sm90("steal")
    rng = np.random.default_rng([d, hq, hkv, bs, splits, dtype == "bf16", 53])
    lens = [20011, 1, 9, 300, 7, 4099]
    case = Case(rng, lens, hq, hkv, d, bs, dtype)
    scale = d ** -0.5
    ws = get_workspace(len(lens), hq, hkv, d, ws_slots(splits, "steal"))
    before = ws.steals()
    out = case.run(scale, config=STEAL, num_splits=splits, workspace=ws)
    check(case, out, scale, FLOOR[dtype])
    assert ws.steals() > before, "no block stole: the test does not exercise stealing"


@pytest.mark.parametrize("hq,hkv", [(4, 4), (6, 2), (32, 8), (16, 2)])  # G 1, 3, 4, 8
@pytest.mark.parametrize("bs", [1, 4, 16, 64])  # row copies, short runs, page = tile, > tile
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("impl", ["bulk_mma", "steal_mma"])
def test_mma_math_matches_reference(impl, hq, hkv, bs, dtype):
    """The bulk and stealing builds with tensor-core math (mma_math=1): lengths off the
    8-token tile, one long sequence among short ones (the stealing build steals its tiles),
    split counts that leave some splits empty."""
    needs_sm90(impl)
    if impl == "steal_mma" and hq // hkv > 4:
        pytest.skip("the stealing build serves GQA groups of at most 4")
    rng = np.random.default_rng([hq, hkv, bs, dtype == "bf16", impl == "steal_mma", 61])
    lens = [1, 7, 9, 100, 4099, 20011]
    case = Case(rng, lens, hq, hkv, 128, bs, dtype)
    scale = 128 ** -0.5
    out = case.run(scale, config=IMPL_CONFIGS[impl])  # the planned split count
    check(case, out, scale, FLOOR[dtype])
    ws = get_workspace(len(lens), hq, hkv, 128, ws_slots(3, impl))
    before = ws.steals()
    out = case.run(scale, config=IMPL_CONFIGS[impl], num_splits=3, workspace=ws)
    check(case, out, scale, FLOOR[dtype])
    if impl == "steal_mma":  # thieves' phases run the same math
        assert ws.steals() > before, "no block stole: the test does not exercise stealing"


def test_steal_graph_replays_reset_and_empty_sequences():
    """Captured once: the kernel's last block zeroes the claim and cell words, so every replay
    starts clean (lengths change between replays, never past the cache's, including 0: o = 0)
    and keeps stealing."""
    needs_sm90("steal")
    rng = np.random.default_rng(59)
    lens = [16000, 3000, 3000, 16000]
    case = Case(rng, lens, 32, 8, 128, 16, "fp16")
    scale = 128 ** -0.5
    ws = get_workspace(4, 32, 8, 128, ws_slots(3, "steal"))
    out = cp.empty((4, 32 * 128), cp.float16)
    args = (case.q_dev, case.k_dev, case.v_dev, case.tables, case.seq_lens, scale)
    kw = dict(max_seq_len=16000, workspace=ws, out=out, num_splits=3, config=STEAL)
    stream = cp.cuda.Stream(non_blocking=True)
    cp.cuda.Device().synchronize()
    with stream:
        stream.begin_capture()
        decode_attention(*args, **kw)
        graph = stream.end_capture()
        steals = ws.steals()
        for new in ([16000, 2, 3000, 1], [15999, 0, 1, 2999], [16000, 3000, 3000, 16000],
                    [0, 0, 0, 0], [1, 3000, 2, 16000]):
            case.seq_lens[...] = cp.asarray(np.asarray(new, np.int32))
            out.fill(np.nan)
            graph.launch(stream)
            stream.synchronize()
            got = out.get().astype(np.float32).reshape(4, 32, 128)
            empty = [i for i, n in enumerate(new) if n == 0]
            for i in empty:
                assert (got[i] == 0).all()
            if len(empty) < 4:
                fixed = [n if n else 1 for n in new]
                ref_rows = case.reference(scale, lens=fixed)
                for i in empty:
                    got[i] = ref_rows[i]
                check(case, got, scale, FLOOR["fp16"], lens=fixed)
            assert int(ws.words[1:].get().max()) == 0, "claim / cell words not reset"
        assert ws.steals() > steals


def test_bulk_rejects_async_and_bad_shapes():
    needs_sm90("bulk")
    rng = np.random.default_rng(41)
    case = Case(rng, [17], 8, 2, 128, 16, "fp16")
    with pytest.raises(ValueError, match="sync"):
        case.run(128 ** -0.5, variant="async", phi=0.0, config=BULK)
    with pytest.raises(ValueError, match="16"):
        case.run(128 ** -0.5, config=dict(impl="bulk", unroll=16))
    big = Case(rng, [17], 16, 2, 128, 16, "fp16")  # G 8: the steal build would spill
    with pytest.raises(ValueError, match="at most 4"):
        big.run(128 ** -0.5, config=STEAL)


def test_mma_matches_cuda_core():
    """Same inputs, both kernels: agree to the rounding of p (fp16)."""
    rng = np.random.default_rng(23)
    case = Case(rng, [2049, 100, 17], 32, 8, 128, 16, "fp16")
    scale = 128 ** -0.5
    a = case.run(scale, num_splits=6, config=dict(impl="cuda_core"))
    b = case.run(scale, num_splits=6, config=MMA)
    assert np.abs(a - b).max() <= 2e-3


def test_sync_picks_mma_only_for_small_gqa_steps(monkeypatch):
    """The no-config rule (TUNING mma_min_group / mma_max_kv_mb): a launch counter on each
    kernel shows which one ran."""
    import rawengine.backends.cuda.attention as attn

    ran = []
    real = attn.kernel

    def spy(file, name, defines):
        ran.append(file)
        return real(file, name, defines)

    monkeypatch.setattr(attn, "kernel", spy)
    rng = np.random.default_rng(31)
    for (hq, hkv), lens, want in [((32, 8), [300], "decode_attention_mma.cu"),
                                  ((8, 8), [300], "decode_attention.cu"),
                                  ((32, 8), [12000], "decode_attention.cu")]:
        case = Case(rng, lens, hq, hkv, 128, 16, "fp16")
        ran.clear()
        out = case.run(128 ** -0.5)
        assert ran == [want], (hq, hkv, lens, ran)
        check(case, out, 128 ** -0.5, FLOOR["fp16"])


def test_sync_picks_bulk_only_for_large_gqa_steps(monkeypatch):
    """The no-config bulk rule (TUNING bulk_groups / bulk_min_kv_mb, here lowered to 16 MB so
    the cases stay small): GQA groups of 2-4 with D = 128 over the threshold run the bulk
    build with its math on tensor cores (bulk_mma_math), MHA and small steps do not."""
    import rawengine.backends.cuda.attention as attn

    needs_sm90("bulk")
    ran = []
    real = attn.kernel

    def spy(file, name, defines):
        ran.append((file, defines.get("BULK", 0), defines.get("MMA_MATH", 0)))
        return real(file, name, defines)

    monkeypatch.setattr(attn, "kernel", spy)
    monkeypatch.setitem(attn.TUNING["default"], "bulk_min_kv_mb", 16)
    rng = np.random.default_rng(43)
    bulk = ("decode_attention.cu", 2, 1)  # the bulk build, math on tensor cores
    for (hq, hkv), d, lens, want in [((32, 8), 128, [12000], bulk),
                                     ((16, 8), 128, [12000], bulk),
                                     ((8, 8), 128, [12000], ("decode_attention.cu", 0, 0)),
                                     ((32, 8), 64, [24000], ("decode_attention.cu", 0, 0)),
                                     ((32, 8), 128, [300], ("decode_attention_mma.cu", 0, 0))]:
        case = Case(rng, lens, hq, hkv, d, 16, "fp16")
        ran.clear()
        out = case.run(d ** -0.5)
        assert ran == [want], (hq, hkv, d, lens, ran)
        check(case, out, d ** -0.5, FLOOR["fp16"])


def test_sync_picks_bulk_for_one_wave_steps(monkeypatch):
    """The one-wave bulk rule (TUNING bulk_one_wave_min_kv_mb, here lowered to 1 MB so the
    cases stay small, bulk_min_kv_mb raised out of reach): a GQA step whose (sequence, head
    block) pairs fit one per SM runs the bulk build with tensor-core math, capped at one block
    per SM (a small step: bulk_share_min_kv_mb); more pairs than SMs stay on 'cuda_core'."""
    import rawengine.backends.cuda.attention as attn

    needs_sm90("bulk")
    ran = []
    real_kernel, real_cap = attn.kernel, attn.cap_blocks_smem

    def spy(file, name, defines):
        ran.append((file, defines.get("BULK", 0), defines.get("MMA_MATH", 0)))
        return real_kernel(file, name, defines)

    caps = []

    def spy_cap(smem, max_blocks, tune):
        caps.append(max_blocks)
        return real_cap(smem, max_blocks, tune)

    monkeypatch.setattr(attn, "kernel", spy)
    monkeypatch.setattr(attn, "cap_blocks_smem", spy_cap)
    monkeypatch.setitem(attn.TUNING["default"], "bulk_one_wave_min_kv_mb", 1)
    monkeypatch.setitem(attn.TUNING["default"], "bulk_min_kv_mb", 10**6)
    sms = attn.num_sms(cp.cuda.Device().id)
    rng = np.random.default_rng(47)
    bulk, cuda = ("decode_attention.cu", 2, 1), ("decode_attention.cu", 0, 0)
    for b, lens, want, cap in [(1, [3000], bulk, [1]), (3, [2500, 1, 1700], bulk, [1]),
                               (sms // 8 + 1, [300] * (sms // 8 + 1), cuda, [])]:
        case = Case(rng, lens, 16, 8, 128, 16, "fp16")
        ran.clear()
        caps.clear()
        out = case.run(128 ** -0.5)
        assert ran == [want], (b, ran)
        assert caps == cap, (b, caps)
        check(case, out, 128 ** -0.5, FLOOR["fp16"])


def test_mma_rejects_async():
    rng = np.random.default_rng(29)
    case = Case(rng, [17], 8, 2, 128, 16, "fp16")
    with pytest.raises(ValueError, match="sync"):
        case.run(128 ** -0.5, variant="async", phi=0.0, config=MMA)


@pytest.mark.parametrize("impl", list(IMPL_CONFIGS))
@pytest.mark.parametrize("splits", [2, 7, 64])
def test_split_matches_single_split(splits, impl):
    needs_sm90(impl)
    rng = np.random.default_rng(3)
    case = Case(rng, [4099, 1025, 1, 97], 32, 8, 128, 16, "fp16")
    scale = 128 ** -0.5
    one = case.run(scale, num_splits=1, config=IMPL_CONFIGS[impl])
    many = case.run(scale, num_splits=splits, config=IMPL_CONFIGS[impl])
    check(case, one, scale, FLOOR["fp16"])
    check(case, many, scale, FLOOR["fp16"])
    assert np.abs(one - many).max() <= 2e-3


@pytest.mark.parametrize("variant,impl", VARIANT_IMPLS)
@pytest.mark.parametrize("bs", [1, 16])
def test_visit_order_tables_match_reference(variant, impl, bs):
    """The engine hands decode steps their tables in kv_cache.visit_order (ascending block id,
    the newest block last): every kernel must give the position-order result."""
    needs_sm90(impl)
    rng = np.random.default_rng(11 + bs)
    case = Case(rng, [4099, 1, 97, 1025, 17], 32, 8, 128, bs, "fp16")
    tables = case.tables.get()
    for b, n in enumerate(case.lens):
        pages = -(-n // bs)
        tables[b, :pages] = visit_order(tables[b, :pages].tolist())
    assert (tables != case.tables.get()).any()  # the orders differ, so the test can fail
    case.tables = cp.asarray(tables)
    scale = 128 ** -0.5
    for num_splits in (None, 7):
        out = case.run(scale, variant=variant, phi=0.0 if variant == "async" else None,
                       num_splits=num_splits, config=IMPL_CONFIGS[impl])
        check(case, out, scale, FLOOR["fp16"])


def _big(sign, outlier=None):
    """K rows whose logits with q = (100, noise) sit near sign * 1e4 (scale 1);
    outlier: one key index whose logit is +1e4 while the rest stay near 0."""
    def kv_fn(rng, n, hkv, d, which):
        x = rng.standard_normal((n, hkv, d)) * 0.1
        if which == "k":
            if outlier is None:
                x[:, :, 0] = sign * 100.0
            elif outlier < n:
                x[outlier, :, 0] = 100.0
        return x

    def q_fn(rng, b, hq, d):
        x = rng.standard_normal((b, hq, d)) * 0.1
        x[:, :, 0] = 100.0
        return x
    return kv_fn, q_fn


def _equal_keys(rng, n, hkv, d, which):
    if which == "k":
        return np.repeat(rng.standard_normal((1, hkv, d)), n, axis=0)
    return rng.standard_normal((n, hkv, d))


ADVERSARIAL = {
    "plus_1e4": (_big(+1), True),
    "minus_1e4": (_big(-1), True),
    "one_outlier": (_big(0, outlier=2000), True),
    "all_equal": ((_equal_keys, None), False),
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_async_adversarial_matches_sync(name):
    (kv_fn, q_fn), should_fire = ADVERSARIAL[name]
    rng = np.random.default_rng(11)
    case = Case(rng, [4099, 2048, 7], 8, 2, 128, 16, "fp16", kv_fn=kv_fn, q_fn=q_fn)
    scale = 1.0 if q_fn else 128 ** -0.5
    ws = get_workspace(3, 8, 2, 128, 16)
    before = int(ws.fallback_count.get()[0])
    sync = case.run(scale, num_splits=16, workspace=ws)
    asy = case.run(scale, variant="async", phi=0.0, num_splits=16, workspace=ws)
    fired = int(ws.fallback_count.get()[0]) - before
    assert (fired > 0) == should_fire, f"fallback fired {fired} times"
    assert np.isfinite(asy).all()
    assert np.abs(asy - sync).max() <= 1e-3
    ref = case.reference(scale)
    # logits near 1e4 carry ~1e-3 absolute fp32 rounding in every score: a loose bound
    assert np.abs(sync - ref).max() <= (5e-2 if q_fn else 2e-3)


def test_async_quiet_on_normal_logits_and_empty_splits():
    rng = np.random.default_rng(5)
    case = Case(rng, [1, 7, 33], 32, 8, 128, 16, "fp16")  # most of 64 splits are empty
    scale = 128 ** -0.5
    ws = get_workspace(3, 32, 8, 128, 64)
    before = int(ws.fallback_count.get()[0])
    out = case.run(scale, variant="async", phi=0.0, num_splits=64, workspace=ws)
    assert int(ws.fallback_count.get()[0]) == before
    check(case, out, scale, FLOOR["fp16"])
    sync = case.run(scale, num_splits=64, workspace=ws)
    assert np.abs(out - sync).max() <= 1e-3


def test_async_window_forces_fallback():
    """A window that excludes the logits must fall back and still be exact."""
    rng = np.random.default_rng(6)
    case = Case(rng, [500, 3000], 8, 8, 64, 16, "fp16")
    scale = 64 ** -0.5
    ws = get_workspace(2, 8, 8, 64, 8)
    before = int(ws.fallback_count.get()[0])
    out = case.run(scale, variant="async", phi=50.0, window=(-5.0, 5.0), num_splits=8,
                   workspace=ws)
    assert int(ws.fallback_count.get()[0]) > before
    check(case, out, scale, FLOOR["fp16"])


@pytest.mark.parametrize("variant,impl", VARIANT_IMPLS)
def test_graph_replay_with_new_lengths(variant, impl):
    """Captured once with a fixed split count; seq_lens change between replays."""
    needs_sm90(impl)
    rng = np.random.default_rng(9)
    case = Case(rng, [3000, 2999, 900, 2048], 32, 8, 128, 16, "fp16")
    scale = 128 ** -0.5
    phi = 0.0 if variant == "async" else None
    ws = get_workspace(4, 32, 8, 128, ws_slots(12, impl))
    out = cp.empty((4, 32 * 128), cp.float16)
    args = (case.q_dev, case.k_dev, case.v_dev, case.tables, case.seq_lens, scale)
    kw = dict(max_seq_len=4096, variant=variant, phi=phi, workspace=ws, out=out, num_splits=12,
              config=IMPL_CONFIGS[impl])
    stream = cp.cuda.Stream(non_blocking=True)
    cp.cuda.Device().synchronize()  # inputs were written on the null stream
    with stream:
        decode_attention(*args, **kw)
        stream.synchronize()
        stream.begin_capture()
        decode_attention(*args, **kw)
        graph = stream.end_capture()
        for lens in ([3000, 2999, 900, 2048], [5, 2999, 64, 1], [1, 1, 1, 1], [3000, 17, 899, 2]):
            case.seq_lens[...] = cp.asarray(np.asarray(lens, np.int32))
            out.fill(np.nan)
            graph.launch(stream)
            stream.synchronize()
            got = out.get().astype(np.float32).reshape(4, 32, 128)
            check(case, got, scale, FLOOR["fp16"], lens=lens)


@pytest.mark.parametrize("cfg", [(4, 4, 0, 1), (8, 4, 1, 2), (4, 2, 1, 1), (2, 4, 0, 1),
                                 (4, 8, 1, 1)])
@pytest.mark.parametrize("variant", ["sync", "async"])
def test_kernel_shapes(cfg, variant):
    """Every (num_warps, unroll, prefetch, min_blocks) the bench sweeps is correct."""
    nw, un, pf, mb = cfg
    rng = np.random.default_rng(13)
    case = Case(rng, [4099, 97, 1, 1025], 32, 8, 128, 16, "fp16")
    scale = 128 ** -0.5
    out = case.run(scale, variant=variant, phi=0.0 if variant == "async" else None,
                   config=dict(num_warps=nw, unroll=un, prefetch=pf, min_blocks=mb),
                   num_splits=5)
    check(case, out, scale, FLOOR["fp16"])


@pytest.mark.parametrize("min_chunk", [0, 48, 1 << 20])  # finest, off-grid rounding, 1 split
@pytest.mark.parametrize("d,hq,hkv", [(128, 32, 8), (64, 9, 3)])
@pytest.mark.parametrize("variant,impl", VARIANT_IMPLS)
def test_short_lengths_in_capacity_graph(min_chunk, d, hq, hkv, variant, impl):
    """Graph captured at capacity 8192 (32 splits), replayed with short real lengths: the
    device's chunk rule (min_chunk, unroll-1 chunks, one active split writing o directly)
    must stay exact, including chunks straddling STEP1 / STEP and the merge of 16+ splits."""
    needs_sm90(impl, d)
    rng = np.random.default_rng(17)
    case = Case(rng, [1100, 300, 33, 2], hq, hkv, d, 16, "fp16")
    scale = d ** -0.5
    phi = 0.0 if variant == "async" else None
    ws = get_workspace(4, hq, hkv, d, ws_slots(32, impl))
    out = cp.empty((4, hq * d), cp.float16)
    args = (case.q_dev, case.k_dev, case.v_dev, case.tables, case.seq_lens, scale)
    kw = dict(max_seq_len=8192, variant=variant, phi=phi, workspace=ws, out=out, num_splits=32,
              min_chunk=min_chunk, config=IMPL_CONFIGS[impl])
    stream = cp.cuda.Stream(non_blocking=True)
    cp.cuda.Device().synchronize()  # inputs were written on the null stream
    with stream:
        decode_attention(*args, **kw)
        stream.synchronize()
        stream.begin_capture()
        decode_attention(*args, **kw)
        graph = stream.end_capture()
        for lens in ([1100, 300, 33, 2], [256, 256, 16, 1], [1024, 129, 32, 2], [17, 65, 31, 1],
                     [513, 15, 0, 2]):
            case.seq_lens[...] = cp.asarray(np.asarray(lens, np.int32))
            out.fill(np.nan)
            graph.launch(stream)
            stream.synchronize()
            got = out.get().astype(np.float32).reshape(4, hq, d)
            if 0 in lens:  # an empty sequence gives o = 0
                row = lens.index(0)
                assert (got[row] == 0).all()
                got[row] = case.reference(scale, lens=[1] * 4)[row]  # skip it below
                lens = [n if n else 1 for n in lens]
            check(case, got, scale, FLOOR["fp16"], lens=lens)


# Writes q and each sequence's newest K/V row ~50 us after it starts (after its own PDL wait
# and trigger), so a decode kernel launched after it under programmatic launch runs its
# pre-wait part while these values are still NaN.
_SLOW_SCATTER = r"""
extern "C" __global__ void slow_scatter(unsigned short* d0, const long long* i0,
                                        const unsigned short* v0, int n0,
                                        unsigned short* d1, const long long* i1,
                                        const unsigned short* v1, int n1,
                                        unsigned short* d2, const long long* i2,
                                        const unsigned short* v2, int n2, long long spin) {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    const long long t0 = clock64();
    while (clock64() - t0 < spin) {
    }
    for (int i = threadIdx.x; i < n0; i += blockDim.x) d0[i0[i]] = v0[i];
    for (int i = threadIdx.x; i < n1; i += blockDim.x) d1[i1[i]] = v1[i];
    for (int i = threadIdx.x; i < n2; i += blockDim.x) d2[i2[i]] = v2[i];
}
"""


class LateWriter:
    """The kernel before a decode attention launch, as an adversary: write() (captured before
    it) restores q and every newest K/V row of `case` ~50 us late; poison() (before each replay)
    sets them to NaN, so any read of them ahead of the PDL wait poisons the output."""

    def __init__(self, case):
        from rawengine.backends.cuda import launch

        tables = cp.asnumpy(case.tables)
        bs, hkv, d = case.k_dev.shape[2], case.hkv, case.d
        # flat indices of every newest K/V element and of q, with their true values
        kv_idx = np.concatenate([
            ((tables[b, (n - 1) // bs] * hkv + h) * bs + (n - 1) % bs) * d + np.arange(d)
            for b, n in enumerate(case.lens) for h in range(hkv)]).astype(np.int64)
        self.case, self.n_kv, self.n_q = case, kv_idx.size, case.q_dev.size
        self.kv_i = cp.asarray(kv_idx)
        self.q_i = cp.arange(self.n_q, dtype=cp.int64)
        self.k_true = case.k_dev.reshape(-1)[self.kv_i].copy()
        self.v_true = case.v_dev.reshape(-1)[self.kv_i].copy()
        self.q_true = case.q_dev.reshape(-1).copy()
        self.kernel = launch.Kernel(cp.RawKernel(_SLOW_SCATTER, "slow_scatter"))

    def write(self):
        c = self.case
        self.kernel((1,), (256,), (c.k_dev, self.kv_i, self.k_true, np.int32(self.n_kv),
                                   c.v_dev, self.kv_i, self.v_true, np.int32(self.n_kv),
                                   c.q_dev, self.q_i, self.q_true, np.int32(self.n_q),
                                   np.int64(100_000)))

    def poison(self):
        nan = np.float16(np.nan)  # the values the late writer will restore
        self.case.k_dev.reshape(-1)[self.kv_i] = nan
        self.case.v_dev.reshape(-1)[self.kv_i] = nan
        self.case.q_dev.reshape(-1)[self.q_i] = nan


@pytest.mark.parametrize("variant,impl", VARIANT_IMPLS)
@pytest.mark.parametrize("d,hq,hkv", [(128, 32, 8), (64, 9, 3)])
def test_early_loads_never_read_the_newest_key(variant, impl, d, hq, hkv):
    """The decode kernels read old keys before their PDL wait (the previous kernel of a decode
    step writes q and key len - 1 only). Here the previous kernel writes q and every newest
    K/V row ~50 us late, over NaN: any early read of them would poison the output."""
    from rawengine.backends.cuda import launch

    if int(cp.cuda.Device().compute_capability) < 90 or not launch.pdl_enabled():
        pytest.skip("programmatic dependent launch needs sm_90")
    needs_sm90(impl, d)
    rng = np.random.default_rng(11)
    lens = [300, 17, 1, 2048, 64]
    case = Case(rng, lens, hq, hkv, d, 16, "fp16")
    scale = d ** -0.5
    late = LateWriter(case)
    out = cp.empty((len(lens), hq * d), cp.float16)
    ws = get_workspace(len(lens), hq, hkv, d, ws_slots(8, impl))
    kw = dict(max_seq_len=max(lens), variant=variant, phi=0.0 if variant == "async" else None,
              workspace=ws, out=out, num_splits=8, config=IMPL_CONFIGS[impl] or {})
    stream = cp.cuda.Stream(non_blocking=True)
    cp.cuda.Device().synchronize()
    with stream:
        stream.begin_capture()
        late.write()
        decode_attention(case.q_dev, case.k_dev, case.v_dev, case.tables, case.seq_lens, scale,
                         **kw)
        graph = stream.end_capture()
        for _ in range(3):
            late.poison()
            out.fill(np.nan)
            graph.launch(stream)
            stream.synchronize()
            got = out.get().astype(np.float32).reshape(len(lens), hq, d)
            check(case, got, scale, FLOOR["fp16"])
