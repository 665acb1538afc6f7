"""Inference: the InferenceBackend protocol, its ONNX Runtime and TensorRT implementations, preprocessing."""
