"""Export: physical removal of units, checkpoint folders, ONNX and sentence-transformers."""
