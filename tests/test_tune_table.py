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
