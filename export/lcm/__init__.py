"""The LCM text-to-image export (recipe ``lcm``: export/recipes/lcm_onnx.py runs these in order).

- :mod:`export.lcm.tokenizer`   CLIP's BPE tokenizer: built from open_clip's vocabulary or a pipeline's, written
- :mod:`export.lcm.sources`     the PyTorch components: a diffusers LCM pipeline or ``--random-init`` presets
- :mod:`export.lcm.onnx_file`   the components' ONNX interfaces and their TorchScript export
- :mod:`export.lcm.precisions`  int8 / fp16 / QDQ / Winograd files from the fp32 ones
- :mod:`export.lcm.calibrate`   UNet feeds recorded from the fp32 export, for static QDQ
- :mod:`export.lcm.reference`   diffusers' pipeline over the same components, and its noise stream
- :mod:`export.lcm.verify`      every file vs PyTorch, every precision's image vs diffusers (report.json)
- :mod:`export.lcm.manifest`    edge-model.json, and the runtime's components over an export folder
"""
