"""Torch -> ONNX (fp32) -> static int8 QDQ, with a measured parity report."""
