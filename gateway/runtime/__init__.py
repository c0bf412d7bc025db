"""onnxruntime sessions behind core's ModelRunner port, and the model-repository scanner."""
