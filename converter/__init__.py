"""lineside.converter: the model package format and the steps that turn a trained
model into something a line runs (Keras -> ONNX -> FP16/INT8 -> TensorRT engine).

This package imports neither TensorFlow nor TensorRT at import time; each is
imported only inside the step that needs it.
"""
