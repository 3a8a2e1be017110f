"""charrnn-export: train, export and sample the TensorFlow char-RNN tutorial model."""
