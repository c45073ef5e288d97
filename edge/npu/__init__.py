"""NPU support for edge.devices: execution-provider discovery (plugin EPs registered on first use),
the child-process compile probe, the EP-context cache and the session adapters NPU artifacts need."""
