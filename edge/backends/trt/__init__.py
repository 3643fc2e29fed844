"""TensorRT backend (imports TensorRT and pycuda only when activated)."""
