"""Export: physical removal of units, checkpoint folders, ONNX, sentence-transformers and GGUF (llama.cpp)."""
