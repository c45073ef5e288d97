"""edge-run's export pipeline: Hugging Face / PyTorch models -> verified GGUF / ONNX edge artifacts.

May import torch and friends; the runtime (edge/) never imports this package's torch-using modules.
"""
