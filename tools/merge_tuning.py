"""Merge a partial re-tune into a shipped dispatch table (CPU; no GPU needed).

    PYTHONPATH=. python tools/merge_tuning.py [--prefetch-only] RECORDS.json TABLE.json OUT.json

RECORDS.json: `rawengine tune ... --m <samples> --records RECORDS.json` (every timing).
For each shape in the records: the sampled M take the re-tune's pick (tune.pick: our kernels
need a 2% lead over cuBLAS); buckets of TABLE above the largest sampled M stay. Two policies
on top, both from end-to-end runs on the H100 (docs/flat_gemm_notes.md, session 15):
  - a GEMV entry at M <= 8 stays where the GEMV fuses a neighbouring op in decode steps
    (RoPE + KV write into qkv, SiLU-mul into gate_up, norm / SiLU-mul prologues of products
    with M*N*K <= 2^24): a saved launch is worth more than the 1-2% another kernel wins on
    the plain product;
  - an M = 1 flat stream entry requests two weight tiles before the launch wait (pre = 2):
    at M = 1 the neighbouring kernels are short; at M = 4-8 it cost ~1% of Llama decode.
--prefetch-only: keep every choice of TABLE and only set the stream kernel's L2 prefetch (pf)
on its entries: the pf > 0 that the records time fastest for the entry's own config, summed
over the bucket's sampled M, where it beats pf 0 by tune.PF_MARGIN at every one of them. Model
forwards run without the prefetch, so their choices stay exactly as tuned before (session 17:
a full merge of a re-tune moved picks by noise and cost 1-3% of batched decode).
Prints every changed (shape, M) choice.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rawengine import tune
from rawengine.tune import FUSED_MAX_M, FUSED_MAX_MNK


def roles() -> dict[str, set]:
    """'NxK' -> the ops ({'qkv', 'down', ...}) that shape is in some preset."""
    out: dict[str, set] = {}
    for pre in tune.PRESETS.values():
        for op, (n, k) in tune.shapes_for(*pre).items():
            out.setdefault(f"{n}x{k}", set()).add(op)
    return out


def fuses(key: str, m: int, ops: set) -> bool:
    n, k = map(int, key.split("x"))
    return bool(ops & {"qkv", "gate_up"}) or ("down" in ops and m * n * k <= FUSED_MAX_MNK)


def _choice(rule: dict) -> dict:
    """A table rule without its bucket bound: what tune.pick returns."""
    return {k: v for k, v in rule.items() if k != "m_max"}


def _choice_at(rules: list[dict], m: int) -> dict | None:
    """The table's choice for M = m, None past the last bucket."""
    e = next((e for e in rules if m <= e["m_max"]), None)
    return None if e is None else _choice(e)


def merge(records: list[dict], table: dict) -> list[tuple]:
    ops, changes = roles(), []
    for key, per_m in tune.timings_by_shape(records).items():
        old_rules = table["shapes"].get(key, [])
        best = []
        for m, res in sorted(per_m.items()):
            c, o = tune.pick(res), _choice_at(old_rules, m)
            if (m <= FUSED_MAX_M and o is not None and o["impl"] == "gemv" and c["impl"] != "gemv"
                    and fuses(key, m, ops.get(key, set()))):
                c = o
            if m == 1 and c["impl"] == "flat" and c["params"].get("kernel") == "stream":
                c = dict(c, params=dict(c["params"], pre=2))
            if c != o:
                changes.append((key, m, o, c))
            best.append((m, c))
        top = max(per_m)
        best += [(e["m_max"], _choice(e)) for e in old_rules if e["m_max"] > top]
        table["shapes"][key] = tune.merge_buckets(best)
    return changes


def add_prefetch(records: list[dict], table: dict) -> list[tuple]:
    """--prefetch-only: pf on TABLE's stream entries where the records show it pays."""
    changes = []
    for key, per_m in tune.timings_by_shape(records).items():
        lo = 0
        for e in table["shapes"].get(key, []):
            p = e["params"]
            ms = [m for m in per_m if lo < m <= e["m_max"]]
            lo = e["m_max"]
            if e["impl"] != "flat" or p.get("kernel") != "stream" or not ms:
                continue
            base = tune.without_prefetch(p)
            gains: dict[int, float] = {}
            for m in ms:
                t0 = next((t for t, i, q in per_m[m] if i == "flat" and q == base), None)
                pfs = {q["pf"]: t for t, i, q in per_m[m] if i == "flat" and q.get("pf")
                       and tune.without_prefetch(q) == base}
                if t0 is None:
                    gains = {}
                    break
                for pf in list(gains) or list(pfs):
                    if pf in pfs and pfs[pf] < t0 * (1 - tune.PF_MARGIN):
                        gains[pf] = gains.get(pf, 0.0) + t0 - pfs[pf]
                    else:
                        gains.pop(pf, None)
                if not gains:
                    break
            new = dict(base, pf=max(gains, key=gains.get)) if gains else base
            if new != p:
                changes.append((key, e["m_max"], {"impl": "flat", "params": p},
                                {"impl": "flat", "params": new}))
                e["params"] = new
    return changes


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    prefetch_only = "--prefetch-only" in argv
    argv = [a for a in argv if a != "--prefetch-only"]
    if len(argv) != 3:
        print("usage: " + __doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        records = json.loads(Path(argv[0]).read_text())
        table = json.loads(Path(argv[1]).read_text())
    except (OSError, ValueError) as e:
        print(f"merge_tuning: {e}", file=sys.stderr)
        return 1
    for key, m, o, c in (add_prefetch if prefetch_only else merge)(records, table):
        print(f"{key} M={m}: {o and o['impl']} {o and o.get('params')} -> {c['impl']} "
              f"{c.get('params')}")
    Path(argv[2]).write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
