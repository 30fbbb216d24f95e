"""Build the flat-GEMM dispatch table (see rawengine/tune.py).

    PYTHONPATH=. python tools/tune.py --preset llama-3-8b
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rawengine.tune import tune_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(tune_main(sys.argv[1:]))
