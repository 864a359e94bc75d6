"""The bridge from trained models to the runtime: ONNX graphs plus their model cards."""
