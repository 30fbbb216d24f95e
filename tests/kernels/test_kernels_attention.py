"""Paged causal GQA attention (prefill kernel, and the backend's decode path) vs NumPy."""

import numpy as np
import pytest
from kutil import attention_lowp, check, make_meta, meta_to_device, requires_gpu, rnd

from rawengine.backends.numpy_backend import NumpyBackend

pytestmark = [pytest.mark.gpu, requires_gpu]

CASES = [  # (head_dim, Hq, Hkv, block_size, [(kv_len, query_len), ...])
    (128, 8, 2, 16, [(1, 1), (7, 1), (97, 1), (1025, 1), (4099, 1)]),  # decode, ragged
    (64, 3, 1, 1, [(7, 1), (1025, 1)]),  # decode, block size 1, GQA 3
    (64, 1, 1, 16, [(4099, 4099)]),  # long prefill, MHA
    (128, 8, 1, 16, [(1025, 1025)]),  # GQA 8
    (128, 6, 2, 1, [(1025, 97)]),  # chunked prefill, GQA 3, block size 1
    (64, 8, 2, 16, [(7, 7), (97, 1), (1025, 33), (1, 1), (4099, 7)]),  # ragged mixed, GQA 4
    (8, 8, 2, 16, [(20, 20), (5, 1)]),  # tiny head_dim (test models)
    (16, 4, 4, 16, [(33, 17)]),
    (128, 4, 4, 16, [(130, 130), (300, 65), (64, 64)]),  # tails of the 64-row / 64-key tiles
    (64, 9, 3, 16, [(200, 200), (77, 13), (1, 1)]),  # SmolLM2 heads, prefill + decode rows
    (32, 4, 2, 16, [(70, 70), (9, 3)]),  # head_dim 32: fewer than 8 chunks per row
]


def _run(be, d, hq, hkv, bs, seqs, decode_path, impl="auto"):
    rng = np.random.default_rng(d * 7 + hq + bs + len(seqs))
    dt = be.dtype_name
    meta, nb = make_meta([s[0] for s in seqs], [s[1] for s in seqs], bs, rng)
    t = len(meta.positions)
    k = rnd(rng.standard_normal((nb, hkv, bs, d)), dt)
    v = rnd(rng.standard_normal((nb, hkv, bs, d)), dt)
    used = np.zeros((nb, bs), bool)  # poison every slot no sequence owns
    for b, L in enumerate(meta.seq_lens.tolist()):
        for p in range(L):
            used[meta.block_tables[b, p // bs], p % bs] = True
    unused = np.broadcast_to(~used[:, None, :], (nb, hkv, bs))
    k[unused], v[unused] = np.nan, np.nan
    q = rnd(rng.standard_normal((t, hq, d)) * 2, dt)
    scale = d ** -0.5
    dmeta = meta_to_device(meta)
    args = (be.asarray(q), be.asarray(k), be.asarray(v), dmeta, scale)
    out = be.attention(*args) if decode_path else be.attention_prefill(*args, impl=impl)
    ref = NumpyBackend().attention(q, k, v, meta, scale)
    check(be.to_numpy(out), ref, attention_lowp(q, k, v, meta, scale, dt), floor=1e-4)


def _case_id(c):
    return f"d{c[0]}-g{c[1] // c[2]}-bs{c[3]}-{c[4][0]}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_attention_prefill_kernel(be, case):
    _run(be, *case, decode_path=False, impl="cuda_core")


@pytest.mark.parametrize("case", [c for c in CASES if c[0] % 32 == 0], ids=_case_id)
def test_attention_prefill_tensor_core_kernel(be, case):
    _run(be, *case, decode_path=False, impl="mma")


@pytest.mark.parametrize("case", [c for c in CASES if all(s[1] == 1 for s in c[4])], ids=str)
def test_attention_backend_decode(be, case):
    _run(be, *case, decode_path=True)
