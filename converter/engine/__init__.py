"""TensorRT engines of a model package: batch profiles, the engine manifest, which
engine fits this machine, the builder and the ``--verify`` check.

Only ``build``, ``verify`` and ``machine.probe_machine`` touch TensorRT/pycuda, and they
import them inside functions; the rest is plain Python and runs anywhere.
"""

from converter.engine.select import select_engine

__all__ = ["select_engine"]
