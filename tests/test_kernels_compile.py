"""tools/check_kernels.py: every kernel compiles for sm_80/sm_90 without local-memory spills."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_kernels_compile_without_spills():
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "check_kernels.py")],
                       capture_output=True, text=True, timeout=900)  # ~4 min on 2 cores
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]


def _kernel_bodies(src: str):
    """(name, body text) of every extern "C" __global__ function in a .cu source."""
    import re

    for m in re.finditer(r'extern\s+"C"\s+__global__', src):
        i, depth = m.end(), 0
        while not (src[i] == "{" and depth == 0):  # the body opens after the parameter list
            depth += {"(": 1, ")": -1}.get(src[i], 0)
            i += 1
        name = [n for n in re.findall(r"(\w+)\s*\(", src[m.end():i]) if n != "__launch_bounds__"][0]
        j, depth = i, 0
        while True:
            depth += {"{": 1, "}": -1}.get(src[j], 0)
            if depth == 0:
                break
            j += 1
        yield name, src[i:j + 1]


def test_every_kernel_keeps_the_programmatic_launch_contract():
    """Graph launches let a kernel start before the previous one ends (launch.py). That is
    only safe if every kernel calls RE_PDL_WAIT before it writes anything or reads another
    kernel's output; this checks that each kernel calls it, and that nothing before the call
    stores to memory (weights may be loaded early, also by cp.async into the block's own
    shared memory: gemv.cu's STAGES ring commits its first weight batches before the wait)."""
    import re

    found = 0
    for cu in sorted((ROOT / "kernels_cu").glob("*.cu")):
        for name, body in _kernel_bodies(cu.read_text()):
            found += 1
            assert body.count("RE_PDL_WAIT()") == 1, f"{cu.name}:{name} must call RE_PDL_WAIT() once"
            assert "RE_PDL_TRIGGER()" in body, f"{cu.name}:{name} never calls RE_PDL_TRIGGER()"
            before = body[:body.index("RE_PDL_WAIT()")]
            assert not re.search(r"\b(atomic\w*|__syncthreads|__threadfence|cp_async_wait)\s*\(",
                                 before), f"{cu.name}:{name} synchronises before RE_PDL_WAIT()"
            assert not re.search(r"(?:^|[;{}])\s*\*", before, re.MULTILINE), \
                f"{cu.name}:{name} stores through a pointer before RE_PDL_WAIT()"
            local = set(re.findall(r"(?:\b\w+[\s*]+|,\s*)(\w+)\s*\[", before))  # register arrays declared here
            for target in re.findall(r"\b(\w+)\s*(?:\[[^\]]*\]\s*)+=[^=]", before):
                assert target in local, f"{cu.name}:{name} writes {target}[] before RE_PDL_WAIT()"
    assert found >= 13


def test_sm90_build_emits_the_programmatic_launch_instructions():
    """RE_PDL_WAIT must not be compiled away on sm_90 (it is a no-op elsewhere)."""
    if shutil.which("nvcc") is None:
        pytest.skip("needs nvcc")
    import tempfile

    sys.path.insert(0, str(ROOT))
    from rawengine.backends.cuda.module import source

    with tempfile.TemporaryDirectory() as d:
        cu = Path(d) / "norm.cu"
        cu.write_text(source("norm.cu", {"VEC": 8, "NPT": 1, "HAS_RES": 0}))
        p = subprocess.run(["nvcc", "-arch=sm_90", "-ptx", str(cu), "-o", str(Path(d) / "n.ptx")],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr[-2000:]
        ptx = (Path(d) / "n.ptx").read_text()
    assert "griddepcontrol.wait" in ptx and "griddepcontrol.launch_dependents" in ptx
