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
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
