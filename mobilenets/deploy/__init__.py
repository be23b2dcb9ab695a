"""Deployment: inference form (BN folding), exports checked against the float64 model, int8,
runtimes and the Predictor, benchmarks, the phone engines (ExecuTorch, LiteRT, OpenVINO), and
V2's memory-efficient execution."""
