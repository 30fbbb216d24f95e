"""CUDA backend: CuPy arrays + the project's own kernels in kernels_cu/ (see module.py)."""
