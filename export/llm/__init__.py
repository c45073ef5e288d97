"""Helpers of the chat-model export recipes (``llm`` -> GGUF, ``llm-onnx`` -> ONNX).

- :mod:`export.llm.source`     read / check a Hugging Face folder, build ``--random-init`` models, GGUF -> HF
- :mod:`export.llm.gguf_file`  write a GGUF with the ``gguf`` package; quantize with llama.cpp's quantizer
- :mod:`export.llm.onnx_file`  decoder-with-past ONNX export (torch.onnx) and int8 / int4 weight quantization
- :mod:`export.llm.disk`       weight bytes of a source folder; refuse an export the disk cannot hold
- :mod:`export.llm.check`      logits of llama.cpp / onnxruntime vs transformers, KL, top-1, perplexity
"""
