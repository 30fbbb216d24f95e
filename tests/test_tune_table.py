"""Dispatch-table building (rawengine/tune.py), CPU only: winners, fallbacks, paired entries."""

from rawengine import tune

G1 = dict(rows=1, warps=16, unroll=2, split=1)
G2 = dict(rows=2, warps=4, unroll=8, split=0)
FLAT = dict(kernel="direct", bm=8)


P = tune.PAIRED


def test_pick_gemv_winner_keeps_fastest_paired_timing():
    G2b = dict(G2, unroll=4)
    choice = tune.pick([(40.0, "gemv", G2), (39.0, "gemv", G1), (41.0, "flat", FLAT),
                        (45.0, "cublas", {}), (42.0, P, G2), (41.5, P, G2b)])
    assert choice == {"impl": "gemv", "params": G1, "paired": G2b}


def test_paired_timings_never_win_and_only_gemv_carries_them():
    assert tune.pick([(39.0, "gemv", G2), (38.0, "flat", FLAT), (1.0, P, G2)]) == {
        "impl": "flat", "params": FLAT}
    assert tune.pick([(39.0, "gemv", G2), (40.0, "gemv", G1)]) == {"impl": "gemv", "params": G2}
    c = tune.pick([(30.0, "cublas", {}), (39.0, "gemv", G1), (38.0, "flat", FLAT), (2.0, P, G2)])
    assert c == {"impl": "cublas", "params": {}, "fallback": {"impl": "flat", "params": FLAT}}


def test_own_kernel_needs_a_margin_over_cublas():
    """A win inside CUBLAS_MARGIN goes to cuBLAS (own kernel kept as the fallback)."""
    close = 45.0 * (1 - tune.CUBLAS_MARGIN / 2)
    assert tune.pick([(close, "flat", FLAT), (45.0, "cublas", {}), (46.0, "gemv", G1)]) == {
        "impl": "cublas", "params": {}, "fallback": {"impl": "flat", "params": FLAT}}
    clear = 45.0 * (1 - 2 * tune.CUBLAS_MARGIN)
    assert tune.pick([(clear, "flat", FLAT), (45.0, "cublas", {})]) == {
        "impl": "flat", "params": FLAT}


def test_paired_candidates_have_even_rows_and_include_odd_plus_one():
    cands = tune.paired_candidates()
    assert all(c["rows"] % 2 == 0 for c in cands)
    assert len(cands) == len({tuple(sorted(c.items())) for c in cands})
    odd = next(c for c in tune.GEMV_CONFIGS if c["rows"] % 2)
    assert dict(odd, rows=odd["rows"] + 1) in cands


def test_rules_from_records_merges_buckets_with_paired():
    recs = [dict(N=64, K=128, M=m, impl=i, params=p, us=u)
            for m in (1, 2) for i, p, u in (("gemv", G1, 10.0), ("gemv", G2, 11.0),
                                            (P, G2, 12.0))]
    recs += [dict(N=64, K=128, M=8, impl="cublas", params={}, us=5.0),
             dict(N=64, K=128, M=8, impl="gemv", params=G2, us=9.0)]
    rules = tune.rules_from_records(recs)["64x128"]
    assert rules == [dict(impl="gemv", params=G1, paired=G2, m_max=2),
                     dict(impl="cublas", params={}, fallback=dict(impl="gemv", params=G2),
                          m_max=1 << 30)]


def _merge_tuning():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "merge_tuning.py"
    spec = importlib.util.spec_from_file_location("merge_tuning", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_merge_tuning_policies():
    """tools/merge_tuning.py: sampled M from the re-tune, the table above them, GEMV entries
    kept where they fuse (qkv of a preset), pre = 2 on M = 1 stream entries only."""
    mt = _merge_tuning()
    st = dict(kernel="stream", kt=128, fn=1, warps_n=1, warps_k=8, split=1, bm=8)
    o, qkv = "4096x4096", "12288x4096"  # llama-2-7b o and qkv
    old_gemv = {"impl": "gemv", "params": G1, "paired": G2}
    table = {"shapes": {
        o: [dict(old_gemv, m_max=1), {"impl": "cublas", "params": {}, "m_max": 64},
            {"impl": "cublas", "params": {}, "m_max": 1 << 30}],
        qkv: [dict(old_gemv, m_max=2), {"impl": "cublas", "params": {}, "m_max": 1 << 30}]}}
    recs = []
    for key in (o, qkv):
        n, k = map(int, key.split("x"))
        for m in (1, 2, 4):
            recs += [dict(N=n, K=k, M=m, impl="cublas", params={}, us=40.0),
                     dict(N=n, K=k, M=m, impl="gemv", params=G1, us=38.0),
                     dict(N=n, K=k, M=m, impl="flat", params=st, us=30.0)]
    changes = mt.merge(recs, table)
    rules = table["shapes"]
    # o: the stream kernel everywhere it won, pre = 2 at M = 1 only, cuBLAS kept above M = 4
    assert rules[o][0] == {"impl": "flat", "params": dict(st, pre=2), "m_max": 1}
    assert rules[o][1] == {"impl": "flat", "params": st, "m_max": 4}
    assert [r["impl"] for r in rules[o][2:]] == ["cublas"] and rules[o][2]["m_max"] == 1 << 30
    # qkv: the fusing GEMV stays where it was (M <= 2), the re-tune's pick at M = 4
    assert rules[qkv][0] == dict(old_gemv, m_max=2)
    assert rules[qkv][1]["impl"] == "flat" and "pre" not in rules[qkv][1]["params"]
    assert {(c[0], c[1]) for c in changes} == {(o, 1), (o, 2), (o, 4), (qkv, 4)}


ST = dict(kernel="stream", kt=128, fn=1, warps_n=1, warps_k=8, split=1, bm=8)


def test_pick_chooses_without_prefetch_then_adds_it():
    """The config is picked on timings without the L2 prefetch (model forwards drop it);
    pf is then added where it speeds up that config by more than PF_MARGIN."""
    k64 = dict(ST, kt=64)
    res = [(40.0, "cublas", {}), (30.0, "flat", ST), (30.5, "flat", k64),
           (29.0, "flat", dict(ST, pf=1)), (28.0, "flat", dict(ST, pf=2)),
           (20.0, "flat", dict(k64, pf=2))]  # k64 + pf is fastest, but k64 alone is not
    assert tune.pick(res) == {"impl": "flat", "params": dict(ST, pf=2)}
    close = 30.0 * (1 - tune.PF_MARGIN / 2)
    assert tune.pick([(30.0, "flat", ST), (close, "flat", dict(ST, pf=1))]) == {
        "impl": "flat", "params": ST}
    assert tune.pick([(30.0, "flat", ST), (35.0, "flat", dict(ST, pf=1))]) == {
        "impl": "flat", "params": ST}


def test_candidates_prefetch_only_past_m1():
    def pfs(m):
        return {c.get("pf", 0) for i, c in tune.candidates(m, 512) if c.get("kernel") == "stream"}
    assert pfs(1) == {0}
    assert pfs(2) == set(tune.STREAM_PF) == pfs(16)


def test_merge_tuning_prefetch_only():
    """--prefetch-only keeps every choice and sets pf on a stream entry only where one pf
    beats pf 0 at every sampled M of the bucket (the largest summed gain wins)."""
    mt = _merge_tuning()
    st16 = dict(ST, bm=16)
    key = "4096x4096"
    table = {"shapes": {key: [
        {"impl": "flat", "params": dict(ST, pre=2), "m_max": 1},
        {"impl": "flat", "params": ST, "m_max": 8},
        {"impl": "flat", "params": st16, "m_max": 16},
        {"impl": "cublas", "params": {}, "m_max": 1 << 30}]}}
    times = {  # M: (pf 0, pf 1, pf 2) of the bucket's config
        1: (10.0, None, None), 2: (10.0, 9.0, 9.5), 4: (10.0, 9.5, 9.8), 8: (10.0, 9.8, 10.5),
        12: (12.0, 11.0, 11.9), 16: (12.0, 12.5, 11.0)}
    recs = []
    for m, ts in times.items():
        base = ST if m <= 8 else st16
        for pf, us in enumerate(ts):
            if us is not None:
                recs.append(dict(N=4096, K=4096, M=m, impl="flat",
                                 params=dict(base, pf=pf) if pf else base, us=us))
        recs.append(dict(N=4096, K=4096, M=m, impl="flat", params=dict(base, kt=64), us=1.0))
    changes = mt.add_prefetch(recs, table)
    rules = table["shapes"][key]
    assert rules[0]["params"] == dict(ST, pre=2)  # M = 1: no records of its config, kept
    assert rules[1]["params"] == dict(ST, pf=1)  # pf 2 loses at M = 8; pf 1 wins at 2, 4, 8
    assert rules[2]["params"] == st16  # pf 1 loses at 16, pf 2 within the margin at 12
    assert rules[3] == {"impl": "cublas", "params": {}, "m_max": 1 << 30}
    assert [(c[0], c[1]) for c in changes] == [(key, 8)]
