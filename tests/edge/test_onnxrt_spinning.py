"""The ONNX Runtime backend's intra-op threads sleep when idle instead of spinning.

The line's workers share the cores with each other and the cameras; docs/converter.md has
the measurement (on busy cores, FP32 ran 1.05-1.08x and INT8 1.05-1.38x as fast without spinning).
"""

from __future__ import annotations

import numpy as np

from edge.backends.onnxrt import OnnxRuntimeBackend
from tests.converter.graphs import write_graph


def test_onnxruntime_backend_turns_intra_op_spinning_off(tmp_path):
    backend = OnnxRuntimeBackend(write_graph(tmp_path / "model.onnx", in_shape=["batch", 8, 8, 1]), threads=2)
    backend.activate_impl()
    options = backend._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2
    out = backend.infer_impl(np.zeros((2, 8, 8, 1), np.float32))
    assert out.shape[0] == 2
