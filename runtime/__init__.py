"""The edge runtime: numpy, onnxruntime and ale-py only. Never imports torch."""
