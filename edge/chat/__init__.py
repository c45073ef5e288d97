"""Chat: GGUF models through llama-cpp-python, as scheduler step generators."""
