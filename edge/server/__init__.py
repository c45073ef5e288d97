"""The local HTTP server: OpenAI-compatible chat/completions, models, health, metrics (+ workload routes)."""
