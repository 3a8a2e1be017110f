"""Package data: the shipped model (model.onnx, model.int8.onnx, vocab.json) and its MODEL_CARD.md."""
