"""Deployment: ``onnx`` (verified ONNX export, INT8, metadata), ``nms`` (NMS appended to the graph), ``bench``
(MACs, params and onnxruntime/PyTorch latency)."""
