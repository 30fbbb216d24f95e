"""rawengine: LLM inference on NumPy or CuPy with its own CUDA kernels, no PyTorch."""

from .api import LLM, Completion
from .errors import RawEngineError
from .sampling import SamplingParams

__all__ = ["LLM", "Completion", "SamplingParams", "RawEngineError"]
__version__ = "0.1.0"
