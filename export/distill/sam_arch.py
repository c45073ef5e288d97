"""Upstream SAM / MobileSAM checkpoints of any encoder size: the architecture is read from the
tensor shapes, then built from the upstream ``mobile_sam`` classes and loaded strictly.

Upstream checkpoints (``mobile_sam.pt``, SAM's ``sam_vit_b/l/h.pth``) are bare ``state_dict``s: the
loader upstream ships builds one fixed layout per name. Distilled students have other TinyViT widths
and depths, so this module infers every hyper-parameter that shows in a shape (TinyViT widths, depths,
heads, windows, MLP ratios; ViT width, depth, heads, global-attention blocks; decoder depth and widths)
and uses SAM's fixed values for the rest (8 decoder heads, 1024 input, 256-d prompt embedding).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

PIXEL_MEAN = [123.675, 116.28, 103.53]
PIXEL_STD = [58.395, 57.12, 57.375]
TINYVIT_LAST_DIMS = (320, 448, 576)  # upstream TinyViT keeps 64x64 in its last stage only for these widths


def _count(sd: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    idx = {int(m.group(1)) for k in sd for m in [rx.match(k)] if m}
    return max(idx) + 1 if idx else 0


def tinyvit_config(sd: dict[str, Any], prefix: str = "image_encoder.") -> dict[str, Any]:
    """TinyViT keyword arguments from an encoder state dict (keys under ``prefix``)."""
    p = prefix
    n_stages = _count(sd, re.escape(p) + r"layers\.(\d+)\.")
    if f"{p}layers.{n_stages - 1}.downsample.conv1.c.weight" in sd:
        n_stages += 1  # the last stage has no downsample; with no blocks it has no tensors at all
    dims = [int(sd[f"{p}patch_embed.seq.2.c.weight"].shape[0])]
    for i in range(n_stages - 1):
        dims.append(int(sd[f"{p}layers.{i}.downsample.conv1.c.weight"].shape[0]))
    depths = [_count(sd, re.escape(p) + rf"layers\.{i}\.blocks\.(\d+)\.") for i in range(n_stages)]
    heads, windows = [], []
    mlp_ratio, expand, local = 4.0, 4.0, 3
    for i in range(n_stages):
        if i == 0 and depths[0]:
            expand = sd[f"{p}layers.0.blocks.0.conv1.c.weight"].shape[0] / dims[0]
        if i == 0 or not depths[i]:
            heads.append(1)
            windows.append(7)
            continue
        ab = sd[f"{p}layers.{i}.blocks.0.attn.attention_biases"]
        heads.append(int(ab.shape[0]))
        windows.append(int(round(math.sqrt(ab.shape[1]))))
        mlp_ratio = sd[f"{p}layers.{i}.blocks.0.mlp.fc1.weight"].shape[0] / dims[i]
        local = int(sd[f"{p}layers.{i}.blocks.0.local_conv.c.weight"].shape[-1])
    head = sd.get(f"{p}head.weight")
    return {"img_size": 1024, "in_chans": 3, "num_classes": int(head.shape[0]) if head is not None else 1000,
            "embed_dims": dims, "depths": depths, "num_heads": heads, "window_sizes": windows,
            "mlp_ratio": float(mlp_ratio), "drop_rate": 0.0, "drop_path_rate": 0.0, "use_checkpoint": False,
            "mbconv_expand_ratio": float(expand), "local_conv_size": local, "layer_lr_decay": 0.8}


def vit_config(sd: dict[str, Any], prefix: str = "image_encoder.") -> dict[str, Any]:
    """ImageEncoderViT keyword arguments (SAM ViT-B/L/H layouts) from an encoder state dict."""
    p = prefix
    embed = int(sd[f"{p}patch_embed.proj.weight"].shape[0])
    depth = _count(sd, re.escape(p) + r"blocks\.(\d+)\.")
    rel = [sd[f"{p}blocks.{i}.attn.rel_pos_h"] for i in range(depth)]
    window = min(int(r.shape[0] + 1) // 2 for r in rel)
    global_idx = [i for i, r in enumerate(rel) if (r.shape[0] + 1) // 2 != window]
    head_dim = int(rel[0].shape[1])
    return {"depth": depth, "embed_dim": embed, "img_size": 1024,
            "mlp_ratio": sd[f"{p}blocks.0.mlp.lin1.weight"].shape[0] / embed, "num_heads": embed // head_dim,
            "patch_size": int(sd[f"{p}patch_embed.proj.weight"].shape[-1]), "qkv_bias": True, "use_rel_pos": True,
            "global_attn_indexes": global_idx, "window_size": window,
            "out_chans": int(sd[f"{p}neck.0.weight"].shape[0])}


def build_image_encoder(sd: dict[str, Any], prefix: str = "image_encoder."):
    """The upstream encoder class (TinyViT or ImageEncoderViT) for the keys under ``prefix``."""
    from functools import partial

    import torch
    from mobile_sam.modeling import ImageEncoderViT, TinyViT

    if f"{prefix}patch_embed.seq.2.c.weight" in sd:
        return TinyViT(**tinyvit_config(sd, prefix))
    if f"{prefix}patch_embed.proj.weight" in sd:
        return ImageEncoderViT(**vit_config(sd, prefix), norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    raise ValueError("no TinyViT (MobileSAM) or ViT (SAM) image encoder weights in this checkpoint")


def build_sam_for_state_dict(sd: dict[str, Any]):
    """An upstream ``Sam`` whose every shape matches ``sd`` (weights not loaded)."""
    from mobile_sam.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    d = "mask_decoder."
    dim = int(sd[f"{d}transformer.layers.0.self_attn.q_proj.weight"].shape[0])
    inner = int(sd[f"{d}transformer.layers.0.cross_attn_token_to_image.q_proj.weight"].shape[0])
    decoder = MaskDecoder(
        num_multimask_outputs=int(sd[f"{d}mask_tokens.weight"].shape[0]) - 1,
        transformer=TwoWayTransformer(depth=_count(sd, re.escape(d) + r"transformer\.layers\.(\d+)\."),
                                      embedding_dim=dim,
                                      mlp_dim=int(sd[f"{d}transformer.layers.0.mlp.lin1.weight"].shape[0]),
                                      num_heads=8, attention_downsample_rate=dim // inner),
        transformer_dim=dim, iou_head_depth=_count(sd, re.escape(d) + r"iou_prediction_head\.layers\.(\d+)\."),
        iou_head_hidden_dim=int(sd[f"{d}iou_prediction_head.layers.0.weight"].shape[0]))
    emb = int(sd["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"].shape[1]) * 2
    prompt = PromptEncoder(embed_dim=emb, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                           mask_in_chans=int(sd["prompt_encoder.mask_downscaling.3.weight"].shape[0]))
    return Sam(image_encoder=build_image_encoder(sd), prompt_encoder=prompt, mask_decoder=decoder,
               pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD)


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """A checkpoint file -> state dict (bare, or under a "model" / "state_dict" key)."""
    import torch

    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not any(k.startswith("image_encoder.") for k in obj):
        raise ValueError("the file holds no SAM state dict (no image_encoder.* weights)")
    return obj


def load_sam(path: str | Path):
    """An upstream-format SAM / MobileSAM checkpoint of any encoder size -> ``Sam`` in eval mode."""
    sd = load_state_dict(path)
    sam = build_sam_for_state_dict(sd)
    sam.load_state_dict(sd, strict=True)
    return sam.eval()
