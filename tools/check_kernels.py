#!/usr/bin/env python3
"""Compile every kernels_cu/*.cu with nvcc for sm_80 and sm_90 (-Xptxas -v), with the -D variants
the runtime uses; fail on compile errors and on any local-memory spill.

    python3 tools/check_kernels.py          # exit 0: all clean; prints registers per kernel
Exits 0 with "skipped: no nvcc" where nvcc is absent. Compiles in parallel (one job per core).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KDIR = ROOT / "kernels_cu"
ARCHS = ("80", "90")
BF16 = {"USE_BF16": 1}

# (file, defines) per variant the backends launch; few, but covering every #if branch.
# Files not listed (other owners' kernels) compile once with their defaults.
VARIANTS: list[tuple[str, dict]] = [
    ("embedding.cu", {"VEC": 8}), ("embedding.cu", {"VEC": 1}),
    ("norm.cu", {"VEC": 8, "NPT": 2, "RESIDUAL": 1}),
    ("norm.cu", {"VEC": 8, "NPT": 4, "RESIDUAL": 0, **BF16}),
    ("norm.cu", {"VEC": 1, "NPT": 2, "RESIDUAL": 1}),
    ("rope.cu", {"HEAD_DIM": 128, "VEC": 8}), ("rope.cu", {"HEAD_DIM": 64, "VEC": 8, **BF16}),
    ("rope.cu", {"HEAD_DIM": 8, "VEC": 1}),
    ("activation.cu", {"VEC": 8}), ("activation.cu", {"VEC": 1, **BF16}),
    ("attention_prefill.cu", {"HEAD_DIM": 128, "ROWS_PER_WARP": 4, "NUM_WARPS": 4}),
    ("attention_prefill.cu", {"HEAD_DIM": 64, "ROWS_PER_WARP": 4, "NUM_WARPS": 4, **BF16}),
    ("attention_prefill.cu", {"HEAD_DIM": 8, "ROWS_PER_WARP": 4, "NUM_WARPS": 4}),
    ("attention_prefill_mma.cu", {"HEAD_DIM": 128}),
    ("attention_prefill_mma.cu", {"HEAD_DIM": 64, **BF16}),
    ("attention_prefill_mma.cu", {"HEAD_DIM": 32}),
    ("sampling.cu", {}), ("sampling.cu", {"LOGITS_F32": 1, **BF16}),
]
# decode attention as attention.kernel_config() launches it: groups <= 4 run 8 warps,
# UNROLL 4, 2 blocks/SM; larger groups 4 warps, UNROLL 2; sync and async; L2 prefetch on/off
_DECODE_SMALL = {"NUM_WARPS": 8, "UNROLL": 4, "MIN_BLOCKS": 2}
_DECODE_BIG = {"NUM_WARPS": 4, "UNROLL": 2, "MIN_BLOCKS": 1}
VARIANTS += [
    ("decode_attention.cu", {"HEAD_DIM": 128, "GROUP": 4, "IS_ASYNC": a, "PREFETCH": p,
                             **_DECODE_SMALL, "UNROLL": 4 - a}) for a in (0, 1) for p in (0, 1)
] + [
    ("decode_attention.cu", {"HEAD_DIM": 64, "GROUP": 3, "IS_ASYNC": 1, "PREFETCH": 0,
                             **_DECODE_SMALL, "UNROLL": 3, "DTYPE_BF16": 1}),
    ("decode_attention.cu", {"HEAD_DIM": 128, "GROUP": 1, "IS_ASYNC": 1, "PREFETCH": 0,
                             **_DECODE_SMALL, "UNROLL": 3}),
    ("decode_attention.cu", {"HEAD_DIM": 128, "GROUP": 8, "IS_ASYNC": 1, "PREFETCH": 0,
                             **_DECODE_BIG}),
]
# the tensor-core decode kernel (impl 'mma', sync only): the tuned shape (4 warps, 16-token
# tiles, 3 stages, 2 blocks/SM) over the groups and head dims the tests cover, and 32-token
# tiles (which also build the 16-token short-chunk loop)
_DECODE_MMA = {"NUM_WARPS": 4, "TILE": 16, "STAGES": 3, "MIN_BLOCKS": 2}
VARIANTS += [
    ("decode_attention_mma.cu", {"HEAD_DIM": 128, "GROUP": g, **_DECODE_MMA}) for g in (1, 4, 8)
] + [
    ("decode_attention_mma.cu", {"HEAD_DIM": 64, "GROUP": 3, **_DECODE_MMA}),
    ("decode_attention_mma.cu", {"HEAD_DIM": 128, "GROUP": 4, **_DECODE_MMA, **BF16}),
    ("decode_attention_mma.cu", {"HEAD_DIM": 128, "GROUP": 4, **_DECODE_MMA, "TILE": 32,
                                 "STAGES": 2}),
    ("decode_attention_mma.cu", {"HEAD_DIM": 64, "GROUP": 8, **_DECODE_MMA, "TILE": 32,
                                 "STAGES": 4, **BF16}),
]
# the cp.async.bulk build of the CUDA-core kernel (impl 'bulk', sync only, sm_90 only: "SM"
# names the architectures a variant is built for): the tuned shape over the groups the tests
# cover, and the unroll-8 shape
_DECODE_BULK = {"NUM_WARPS": 8, "UNROLL": 4, "BULK": 2, "MIN_BLOCKS": 1, "PREFETCH": 0,
                "SM": "90"}
VARIANTS += [
    ("decode_attention.cu", {"HEAD_DIM": 128, "GROUP": g, **_DECODE_BULK}) for g in (1, 4, 8)
] + [
    ("decode_attention.cu", {"HEAD_DIM": 64, "GROUP": 3, **_DECODE_BULK, **BF16}),
    ("decode_attention.cu", {"HEAD_DIM": 128, "GROUP": 4, **_DECODE_BULK, "UNROLL": 8}),
    # its work-stealing build (bulk steal=1: decode_attention_dyn_kernel)
    ("decode_attention.cu", {"HEAD_DIM": 128, "GROUP": 4, **_DECODE_BULK, "DYN": 1, "EXTRA": 8}),
    ("decode_attention.cu", {"HEAD_DIM": 64, "GROUP": 3, **_DECODE_BULK, "DYN": 1, "EXTRA": 8,
                             **BF16}),
    ("decode_attention.cu", {"HEAD_DIM": 128, "GROUP": 1, **_DECODE_BULK, "DYN": 1, "EXTRA": 8}),
    # both with their math on tensor cores (bulk mma_math=1: decode_mma_step.cuh)
    ("decode_attention.cu", {"HEAD_DIM": 128, "GROUP": 4, **_DECODE_BULK, "MMA_MATH": 1}),
    ("decode_attention.cu", {"HEAD_DIM": 128, "GROUP": 8, **_DECODE_BULK, "MMA_MATH": 1,
                             **BF16}),
    ("decode_attention.cu", {"HEAD_DIM": 128, "GROUP": 3, **_DECODE_BULK, "MMA_MATH": 1,
                             "DYN": 1, "EXTRA": 8}),
    # the probe builds of tools/timeline_attention.py (timeline.cuh), and the read-floor probe
    # (tools/read_floor.py)
    ("decode_attention.cu", {"HEAD_DIM": 128, "GROUP": 4, **_DECODE_BULK, "TIMELINE": 1}),
    ("decode_attention.cu", {"HEAD_DIM": 128, "GROUP": 4, **_DECODE_BULK, "DYN": 1, "EXTRA": 8,
                             "TIMELINE": 1}),
    ("kv_read_floor.cu", {"RUN": 256, "UNROLL": 4, "HEAD_MAJOR": 0}),
]


def decode_step_variants() -> list[tuple[str, dict]]:
    """The persistent batch-1 step (sm_90 only) at SmolLM2-135M's shape on the H100's 132 SMs."""
    sys.path.insert(0, str(ROOT))
    from rawengine.backends.cuda.decode_step import shape_defines
    from rawengine.config import ModelConfig
    from rawengine.presets import PRESETS

    df = shape_defines(ModelConfig.from_dict(PRESETS["smollm2-135m"]), 132)
    return [("decode_step.cu", {**df, "SM": "90"}), ("decode_step.cu", {**df, **BF16, "SM": "90"})]


VARIANTS += decode_step_variants()



def gemv_variants() -> list[tuple[str, dict]]:
    """GEMV as decode launches it: every gemv config of the shipped dispatch table at each M it
    serves (MB = M <= 8), and the fused variants (rawengine/backends/cuda/gemm.py): the qkv
    RMSNorm prologue + RoPE/KV epilogue at M 1..8, the RMSNorm and SiLU-mul prologues at M 1..4
    (the fusion rule admits gate_up/down only there for the shipped shapes; prologue-only MB 7/8
    builds spill 4-12 B at the 80-register cap and are never launched); table entries with
    STAGES build the cp.async weight ring, 'paired' entries the SiLU-mul epilogue."""
    table = json.loads((ROOT / "rawengine" / "tuning" / "NVIDIA_H100_80GB_HBM3.json").read_text())
    cfgs = set()  # (M, rows, warps, unroll, stages, epilogue): 'paired' entries run EPILOGUE 2
    for entries in table["shapes"].values():
        lo = 1
        for e in entries:
            if e["impl"] == "gemv":
                for p, epi in ((e["params"], 0), (e.get("paired"), 2)):
                    if p is None:
                        continue
                    for m in range(lo, min(e["m_max"], 8) + 1):
                        cfgs.add((m, p.get("rows", 2), p.get("warps", 4), p.get("unroll", 4),
                                  p.get("stages", 0), epi))
            lo = e["m_max"] + 1
    out = [("gemv.cu", {"MB": m, "ROWS": r, "WARPS": w, "UNROLL": u, "VEC": 8,
                        **({"STAGES": st} if st else {}), **({"EPILOGUE": ep} if ep else {})})
           for m, r, w, u, st, ep in sorted(cfgs)]
    small = {"ROWS": 2, "WARPS": 8, "UNROLL": 4, "VEC": 8}
    for m in range(1, 9):
        out.append(("gemv.cu", {"MB": m, **small, "PROLOGUE": 1, "PRO_RES": 1, "EPILOGUE": 1,
                                "HEAD_DIM": 64 if m % 2 else 128}))
    for m in range(1, 5):
        out.append(("gemv.cu", {"MB": m, **small, "PROLOGUE": 1, "PRO_RES": 1}))
        out.append(("gemv.cu", {"MB": m, **small, "PROLOGUE": 2, **BF16}))
    return out


VARIANTS += gemv_variants()


def _occ(occ: int) -> dict:
    """gemm.flat's defines for a stream config's occ (MIN_BLOCKS only where it is > 1)."""
    return {"MIN_BLOCKS": occ} if occ > 1 else {}


def flat_variants() -> list[tuple[str, dict]]:
    """The flat GEMM's three kernels (gemm.flat): the smem build and a direct build with their
    defaults, and every stream config of the shipped table at the BM it serves (8 / 16 / 32),
    with one bias + residual bf16 build."""
    table = json.loads((ROOT / "rawengine" / "tuning" / "NVIDIA_H100_80GB_HBM3.json").read_text())
    cfgs = set()
    for entries in table["shapes"].values():
        for e in entries:
            for c in (e, e.get("fallback")):
                p = (c or {}).get("params", {})
                if c and c["impl"] == "flat" and p.get("kernel") == "stream":
                    cfgs.add((p["bm"] // 8, p.get("fn", 1), p.get("warps_n", 1),
                              p.get("warps_k", 8), p.get("kt", 128), p.get("pre", 1),
                              p.get("occ", 1), p.get("pf", 0)))
    out = [("flat_gemm.cu", {"DIRECT": 0, "FM": 2, "FN": 1, "WARPS_N": 2, "WARPS_K": 4,
                             "BK": 128, "STAGES": 4}),
           ("flat_gemm.cu", {"DIRECT": 1, "FM": 1, "FN": 2, "WARPS_N": 1, "WARPS_K": 8,
                             "UNROLL": 2})]
    out += [("flat_gemm.cu", {"DIRECT": 2, "FM": fm, "FN": fn, "WARPS_N": wn, "WARPS_K": wk,
                              "KT": kt, "PRE_TILES": pre, **_occ(occ),
                              **({"PF_TILES": pf, "PF_WAVE": 264} if pf else {})})
            for fm, fn, wn, wk, kt, pre, occ, pf in sorted(cfgs)]
    out.append(("flat_gemm.cu", {"DIRECT": 2, "FM": 1, "FN": 1, "WARPS_N": 1, "WARPS_K": 16,
                                 "KT": 128, "HAS_BIAS": 1, "HAS_RES": 1, "DTYPE_BF16": 1}))
    # the probe builds of tools/timeline_gemm.py (timeline.cuh)
    out.append(("flat_gemm.cu", {"DIRECT": 2, "FM": 1, "FN": 1, "WARPS_N": 1, "WARPS_K": 8,
                                 "KT": 128, "PF_TILES": 1, "PF_WAVE": 264, "TIMELINE": 1}))
    out.append(("gemv.cu", {"MB": 1, "ROWS": 2, "WARPS": 4, "UNROLL": 8, "VEC": 8,
                            "TIMELINE": 1}))
    # the paired epilogues as model forwards build them (late trigger): every stream config
    # the table serves a qkv (RoPE, D 128 with bias as qwen2) or gate_up (SiLU-mul) shape with
    from rawengine import tune

    paired = {}
    for pre in tune.PRESETS.values():
        for op, (n, k) in tune.shapes_for(*pre).items():
            if op in ("qkv", "gate_up"):
                paired.setdefault(f"{n}x{k}", set()).add(op)
    epi = set()
    for key, ops in paired.items():
        for e in table["shapes"].get(key, []):
            p = e["params"]
            if e["impl"] == "flat" and p.get("kernel") == "stream":
                for op in ops:
                    epi.add((op, p["bm"] // 8, p.get("fn", 1), p.get("warps_k", 8),
                             p.get("kt", 128), p.get("pre", 1), p.get("occ", 1)))
    for op, fm, fn, wk, kt, pre, occ in sorted(epi):
        d = {"DIRECT": 2, "FM": fm, "FN": fn, "WARPS_N": 1, "WARPS_K": wk, "KT": kt,
             "PRE_TILES": pre, "LATE_TRIGGER": 1, **_occ(occ)}
        d.update({"EPILOGUE": 1, "HEAD_DIM": 128, "HAS_BIAS": 1} if op == "qkv" else
                 {"EPILOGUE": 2})
        out.append(("flat_gemm.cu", d))
    return out


VARIANTS += flat_variants()
# the fused decode MLP and the readers of its fixed sums (mlp.py, fixed_sum.py)
VARIANTS += [
    ("mlp.cu", {"HIDDEN": 576, "MB": 1, "C": 8, "WARPS": 8, "HAS_RES": 1, "FIXED_REPLICAS": 1}),
    ("mlp.cu", {"HIDDEN": 960, "MB": 8, "C": 16, "WARPS": 8, "HAS_RES": 0, "FIXED_REPLICAS": 8,
                **BF16}),
    ("mlp.cu", {"HIDDEN": 576, "MB": 1, "C": 16, "WARPS": 8, "HAS_RES": 1, "X_FIXED": 1,
                "FIXED_REPLICAS": 1}),
    ("norm.cu", {"VEC": 8, "NPT": 1, "RESIDUAL": 1, "FIXED_IN": 1, "FIXED_REPLICAS": 1}),
    # the fused decode attention + o_proj (attention_o.py; sm_90): SmolLM2's shape, and G 4 / 8
    # at D 128 with bf16
    ("decode_attention.cu", {"HEAD_DIM": 64, "GROUP": 3, **_DECODE_BULK, "BULK": 4,
                             "O_PROJ": 1, "ROWS": 48}),
    ("decode_attention.cu", {"HEAD_DIM": 128, "GROUP": 4, **_DECODE_BULK, "BULK": 4,
                             "O_PROJ": 1, "ROWS": 40, **BF16}),
    ("decode_attention.cu", {"HEAD_DIM": 128, "GROUP": 8, **_DECODE_BULK, "BULK": 4,
                             "O_PROJ": 1, "ROWS": 16}),
    # ... and its tensor-core build (the default: attention_o.IMPL)
    ("decode_attention_mma.cu", {"HEAD_DIM": 64, "GROUP": 3, "NUM_WARPS": 8, "TILE": 16,
                                 "STAGES": 4, "MIN_BLOCKS": 1, "O_PROJ": 1, "ROWS": 48}),
    ("decode_attention_mma.cu", {"HEAD_DIM": 128, "GROUP": 4, "NUM_WARPS": 8, "TILE": 16,
                                 "STAGES": 3, "MIN_BLOCKS": 1, "O_PROJ": 1, "ROWS": 40,
                                 **BF16}),
    ("gemv.cu", {"MB": 1, "ROWS": 2, "WARPS": 8, "UNROLL": 4, "VEC": 8, "PROLOGUE": 1,
                 "PRO_RES": 1, "PRO_FIXED": 1, "FIXED_REPLICAS": 1, "EPILOGUE": 1,
                 "HEAD_DIM": 64}),
    ("gemv.cu", {"MB": 8, "ROWS": 2, "WARPS": 8, "UNROLL": 4, "VEC": 1, "PROLOGUE": 1,
                 "PRO_RES": 1, "PRO_FIXED": 1, "FIXED_REPLICAS": 8, **BF16}),
]

_FUNC = re.compile(r"Compiling entry function '(\w+)' for 'sm_(\d+)'")
_SPILL = re.compile(r"(\d+) bytes spill stores")
_REGS = re.compile(r"Used (\d+) registers")


def variants() -> list[tuple[str, dict]]:
    listed = {f for f, _ in VARIANTS}
    extra = [(p.name, {}) for p in sorted(KDIR.glob("*.cu")) if p.name not in listed]
    return VARIANTS + extra


def compile_one(nvcc: str, file: str, defines: dict) -> tuple[str, int, str]:
    # -fatbin: device code only (ptxas reports the same); -c would also run the host compiler,
    # ~20% of the time on the 2-core CI machine
    cmd = [nvcc, "-std=c++17", "-fatbin", "-o", os.devnull, "-Xptxas", "-v", f"-I{KDIR}"]
    defines = dict(defines)
    for a in defines.pop("SM", ",".join(ARCHS)).split(","):
        cmd += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    cmd += [f"-D{k}={v}" for k, v in defines.items()] + [str(KDIR / file)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    tag = file + (" " + " ".join(f"{k}={v}" for k, v in defines.items()) if defines else "")
    return tag, p.returncode, p.stdout + p.stderr


def parse(log: str) -> list[tuple[str, str, int, int]]:
    """(kernel, arch, registers, spill store bytes) per entry function."""
    rows, cur = [], None
    for line in log.splitlines():
        if m := _FUNC.search(line):
            cur = [m.group(1), m.group(2), 0, 0]
            rows.append(cur)
        elif cur and (m := _SPILL.search(line)):
            cur[3] = int(m.group(1))
        elif cur and (m := _REGS.search(line)):
            cur[2] = int(m.group(1))
    return [tuple(r) for r in rows]


def main() -> int:
    nvcc = shutil.which("nvcc") or next(
        (str(p) for p in [Path("/usr/local/cuda/bin/nvcc")] if p.exists()), None)
    if nvcc is None:
        print("skipped: no nvcc")
        return 0
    with ThreadPoolExecutor(os.cpu_count() or 2) as ex:
        results = list(ex.map(lambda v: compile_one(nvcc, *v), variants()))
    failed = 0
    for tag, rc, log in results:
        if rc != 0:
            failed += 1
            print(f"FAIL compile {tag}\n{log}")
            continue
        for name, arch, regs, spill in parse(log):
            bad = spill > 0
            failed += bad
            print(f"{'SPILL' if bad else 'ok   '} sm_{arch} {regs:4d} regs {spill:4d} B spill  {name:32s} {tag}")
    print(f"{len(results)} variants, {failed} problem(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
