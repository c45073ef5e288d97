"""Few-step latent-consistency image generation over onnxruntime: CLIP tokenizer, numpy LCM scheduler,
pipeline (txt2img / img2img), ImageEngine, and the API / CLI front doors."""
