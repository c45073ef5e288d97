"""sam-encoder: MobileSAM's decoupled distillation (Zhang et al. 2023, "Faster Segment Anything").

A small image encoder (upstream TinyViT) is trained to reproduce the teacher encoder's image
embeddings (1 x 256 x 64 x 64) with a mean-squared error on unlabeled images; the teacher's prompt
encoder and mask decoder are kept unchanged, so the student's embeddings feed the same decoder. The
teacher's embeddings are computed once (decoupled: the teacher never runs during training).

Teacher: an upstream-format checkpoint (SAM ViT-B/L/H ``sam_vit_*.pth``, MobileSAM ``mobile_sam.pt``
or any TinyViT size, see export.distill.sam_arch). Student: ``vit_t`` (MobileSAM's TinyViT-5M) or a
custom TinyViT (``--student-dims/--student-depths/...``), started from the teacher's tensors whose
names and shapes match (``--init teacher``), from scratch (``random``) or from a checkpoint.

Before and after: embedding MSE to the teacher and mask IoU against the teacher's masks (upstream
SamPredictor, same prompts) on held-out images. Output: ``<out>/mobile_sam.pt`` (upstream format,
``torch.save(sam.state_dict())``) that `edge-run export sam <out>/mobile_sam.pt` takes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.distill.common import TrainConfig, Trainer, opt, require_path

HELP = "MobileSAM decoupled distillation: small TinyViT image encoder <- teacher embeddings (MSE) -> mobile_sam.pt"
CHECKPOINT = "mobile_sam.pt"
STUDENTS = {  # TinyViT layouts: MobileSAM's, and small ones for tests / very small devices
    "vit_t": {"embed_dims": [64, 128, 160, 320], "depths": [2, 2, 6, 2], "num_heads": [2, 4, 5, 10],
              "window_sizes": [7, 7, 14, 7], "mlp_ratio": 4.0, "mbconv_expand_ratio": 4.0},
    "tiny": {"embed_dims": [8, 16, 24, 320], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 5],
             "window_sizes": [7, 7, 14, 7], "mlp_ratio": 2.0, "mbconv_expand_ratio": 2.0},
    "micro": {"embed_dims": [8, 16, 24, 320], "depths": [1, 1, 0, 0], "num_heads": [1, 1, 1, 5],
              "window_sizes": [7, 7, 14, 7], "mlp_ratio": 2.0, "mbconv_expand_ratio": 2.0},
}


@dataclass
class Config(TrainConfig):
    teacher: str | None = opt(None, "teacher: an upstream SAM / MobileSAM checkpoint (.pt / .pth state dict)")
    student: str = opt("vit_t", "student TinyViT layout", choices=tuple(STUDENTS))
    student_dims: str | None = opt(None, "override the student's stage widths, e.g. '64,128,160,320' (last: 320, "
                                         "448 or 576)")
    student_depths: str | None = opt(None, "override the student's blocks per stage, e.g. '2,2,6,2'")
    student_heads: str | None = opt(None, "override the student's attention heads per stage, e.g. '2,4,5,10'")
    init: str = opt("teacher", "student start: 'teacher' (copy tensors whose names and shapes match), 'random', or "
                               "an upstream checkpoint whose image encoder fits the student")
    images: str | None = opt(None, "folder of unlabeled training images (default: scikit-image photos + generated "
                                   "scenes)")
    num_images: int = opt(64, "generated training images when --images is not given")
    held_out_images: int = opt(4, "held-out images (generated scenes of another seed) for the evaluation")
    eval_points: int = opt(3, "the evaluation clicks an N x N grid of points (plus two boxes) on each held-out image")
    bn: str = opt("auto", "BatchNorm during training: 'train' (batch statistics), 'frozen' (the running statistics "
                          "the student starts with), 'auto' = frozen unless --init random", choices=("auto", "train",
                                                                                                   "frozen"))
    batch_size: int = opt(4, "images per process per step")
    lr: float = opt(1e-3, "peak learning rate (AdamW)")


# ---------------------------------------------------------------------------------------------- student
def _ints(text: str | None, flag: str, n: int) -> list[int] | None:
    from edge.errors import BadRequest

    if text is None:
        return None
    try:
        vals = [int(x) for x in re.split(r"[,\s]+", text.strip()) if x]
    except ValueError:
        vals = []
    if len(vals) != n or any(v < 0 for v in vals):
        raise BadRequest(f"{flag} {text!r} must be {n} comma-separated non-negative integers.", param=flag)
    return vals


def student_layout(cfg: Config) -> dict[str, Any]:
    """The student's TinyViT keyword arguments (preset + overrides), checked."""
    from edge.errors import BadRequest
    from export.distill.sam_arch import TINYVIT_LAST_DIMS

    lay = dict(STUDENTS[cfg.student])
    for key, flag, text in (("embed_dims", "--student-dims", cfg.student_dims),
                            ("depths", "--student-depths", cfg.student_depths),
                            ("num_heads", "--student-heads", cfg.student_heads)):
        vals = _ints(text, flag, 4)
        if vals is not None:
            lay[key] = vals
    if lay["embed_dims"][-1] not in TINYVIT_LAST_DIMS:
        raise BadRequest(f"the student's last stage width must be one of {TINYVIT_LAST_DIMS} (upstream TinyViT keeps "
                         f"the 64x64 grid only for those), got {lay['embed_dims'][-1]}.", param="--student-dims")
    for i, (d, h) in enumerate(zip(lay["embed_dims"], lay["num_heads"])):
        if i and (h < 1 or d % h):
            raise BadRequest(f"stage {i}: width {d} is not divisible by {h} heads.", param="--student-heads")
    return {"img_size": 1024, "in_chans": 3, "num_classes": 1000, "drop_rate": 0.0, "drop_path_rate": 0.0,
            "use_checkpoint": False, "local_conv_size": 3, "layer_lr_decay": 0.8, **lay}


def build_student(teacher_sam, layout: dict[str, Any], init: str):
    """An upstream Sam: a new TinyViT image encoder + the teacher's prompt encoder and mask decoder
    (copies, frozen). Returns (sam, info about the initialisation)."""
    import copy

    import torch
    from mobile_sam.modeling import Sam, TinyViT

    from edge.errors import BadRequest
    from export.distill.sam_arch import load_state_dict

    enc = TinyViT(**layout)
    copied = 0
    if init != "random":
        if init == "teacher":
            src = {k.removeprefix("image_encoder."): v for k, v in teacher_sam.state_dict().items()
                   if k.startswith("image_encoder.")}
        else:
            try:
                src = {k.removeprefix("image_encoder."): v for k, v in load_state_dict(init).items()
                       if k.startswith("image_encoder.")}
            except (OSError, ValueError, RuntimeError) as e:
                raise BadRequest(f"--init {init!r} is neither 'teacher', 'random' nor a SAM checkpoint: {e}",
                                 param="--init") from None
        own = enc.state_dict()
        take = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
        own.update(take)
        enc.load_state_dict(own)
        copied = len(take)
    sam = Sam(image_encoder=enc, prompt_encoder=copy.deepcopy(teacher_sam.prompt_encoder),
              mask_decoder=copy.deepcopy(teacher_sam.mask_decoder),
              pixel_mean=teacher_sam.pixel_mean.flatten().tolist(), pixel_std=teacher_sam.pixel_std.flatten().tolist())
    sam.prompt_encoder.requires_grad_(False)
    sam.mask_decoder.requires_grad_(False)
    sam.eval()
    n_enc = sum(p.numel() for p in enc.parameters())
    return sam, {"init": init, "copied_tensors": copied, "student_encoder_params": n_enc,
                 "teacher_encoder_params": sum(p.numel() for p in teacher_sam.image_encoder.parameters()),
                 "layout": {k: layout[k] for k in ("embed_dims", "depths", "num_heads", "window_sizes")}}


# ---------------------------------------------------------------------------------------------- data
def encoder_input(rgb: np.ndarray) -> np.ndarray:
    """1 x 3 x 1024 x 1024 float32: resized (longest side 1024), normalised, padded - the runtime's
    own preprocessing (edge.segment.preprocess), which matches upstream's."""
    from edge.segment import preprocess as pre

    x, _ = pre.encoder_input(rgb)
    return x


def teacher_embeddings(teacher_sam, images: list[np.ndarray], tr: Trainer, cache: Path | None) -> Any:
    """(N, 256, 64, 64) teacher embeddings, computed once: float16 in a memory-mapped file beside the
    checkpoints (each process computes its share; a resumed run skips them), or float32 in memory when
    ``cache`` is None (the held-out set)."""
    import torch

    n = len(images)
    shape = (n, 256, 64, 64)
    if cache is None:
        with torch.no_grad():
            return np.stack([teacher_sam.image_encoder(torch.from_numpy(encoder_input(im)).to(tr.device))[0]
                             .float().cpu().numpy() for im in images])
    done = cache.with_suffix(f".done-{tr.world}")
    if tr.is_main and not done.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(str(cache), mode="w+", dtype=np.float16, shape=shape).flush()
    tr.acc.wait_for_everyone()
    if not done.exists():
        mm = np.load(str(cache), mmap_mode="r+")
        with torch.no_grad():
            for i in range(tr.rank, n, tr.world):
                e = teacher_sam.image_encoder(torch.from_numpy(encoder_input(images[i])).to(tr.device))
                mm[i] = e[0].float().cpu().numpy().astype(np.float16)
        mm.flush()
        del mm
        tr.acc.wait_for_everyone()
        if tr.is_main:
            done.write_text(str(n))
    tr.acc.wait_for_everyone()
    return np.load(str(cache), mmap_mode="r")


def eval_prompts(h: int, w: int, grid: int) -> list[dict[str, Any]]:
    """An N x N grid of single clicks plus two boxes, in image pixels."""
    pts = [{"point_coords": np.array([[(i + 0.5) * w / grid, (j + 0.5) * h / grid]], np.float32),
            "point_labels": np.array([1]), "box": None} for j in range(grid) for i in range(grid)]
    pts.append({"point_coords": None, "point_labels": None, "box": np.array([0.1 * w, 0.1 * h, 0.6 * w, 0.6 * h])})
    pts.append({"point_coords": None, "point_labels": None, "box": np.array([0.4 * w, 0.3 * h, 0.95 * w, 0.9 * h])})
    return pts


def predictor_masks(sam, rgb: np.ndarray, embedding, prompts: list[dict[str, Any]]) -> list[np.ndarray]:
    """Masks from upstream's SamPredictor for ``prompts``, given the image ``embedding`` (the encoder
    is not run: its features are set directly)."""
    import torch
    from mobile_sam import SamPredictor

    p = SamPredictor(sam)
    p.reset_image()
    p.original_size = rgb.shape[:2]
    p.input_size = tuple(p.transform.get_preprocess_shape(rgb.shape[0], rgb.shape[1], p.transform.target_length))
    p.features = torch.as_tensor(np.asarray(embedding, np.float32)).reshape(1, 256, 64, 64)
    p.is_image_set = True
    out = []
    for pr in prompts:
        masks, _, _ = p.predict(point_coords=pr["point_coords"], point_labels=pr["point_labels"], box=pr["box"],
                                multimask_output=False)
        out.append(masks[0])
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


class Evaluator:
    """Held-out images with the teacher's embeddings and masks (computed once); calling it measures a
    student: embedding MSE (and MSE relative to the embeddings' variance) and mask IoU against the
    teacher's masks (same decoder, same prompts: an N x N grid of clicks and two boxes per image)."""

    def __init__(self, teacher_sam, held: list[np.ndarray], held_emb, grid: int):
        self.teacher, self.held, self.grid = teacher_sam, held, grid
        self.emb = [np.asarray(e, np.float32) for e in held_emb]
        self.prompts = [eval_prompts(im.shape[0], im.shape[1], grid) for im in held]
        self.masks = [predictor_masks(teacher_sam, im, e, p) for im, e, p in zip(held, self.emb, self.prompts)]

    def __call__(self, student_sam) -> dict:
        import torch

        student_sam.eval()
        mse, var, ious = [], [], []
        dev = next(student_sam.parameters()).device
        with torch.no_grad():
            for rgb, t, prompts, t_masks in zip(self.held, self.emb, self.prompts, self.masks):
                s_emb = student_sam.image_encoder(torch.from_numpy(encoder_input(rgb)).to(dev))[0].float().cpu().numpy()
                mse.append(float(np.mean((s_emb - t) ** 2)))
                var.append(float(np.var(t)))
                s_masks = predictor_masks(student_sam.cpu() if dev.type != "cpu" else student_sam, rgb, s_emb, prompts)
                if dev.type != "cpu":
                    student_sam.to(dev)
                ious += [iou(a, b) for a, b in zip(s_masks, t_masks)]
        return {"embedding_mse": float(np.mean(mse)), "embedding_rel_mse": float(np.mean(mse) / np.mean(var)),
                "mask_iou": float(np.mean(ious)), "min_mask_iou": float(np.min(ious)), "prompts": len(ious)}


def training_images(cfg: Config):
    """The unlabeled training images: a folder (read lazily) or photos + generated scenes (in memory)."""
    from edge.errors import BadRequest
    from export.distill import data as D

    if cfg.images:
        folder = require_path(cfg.images, "--images", "a folder of .png / .jpg images")
        imgs = D.ImageFolder(folder)
        if not len(imgs):
            raise BadRequest(f"--images {cfg.images!r} holds no .png/.jpg/.jpeg/.webp/.bmp images.", param="--images")
        return imgs
    return [im for _, im in D.unlabeled_images(cfg.num_images, seed=cfg.seed)]


# ---------------------------------------------------------------------------------------------- run
def run(cfg: Config, *, stop_after: int | None = None) -> Path:
    """Teacher embeddings -> student -> distil (MSE) -> evaluate before/after -> mobile_sam.pt."""
    import torch

    from edge.errors import BadRequest
    from export.distill import data as D
    from export.distill.sam_arch import load_sam

    # 1. check inputs
    teacher_path = require_path(cfg.teacher, "--teacher", "an upstream SAM / MobileSAM checkpoint")
    layout = student_layout(cfg)
    if cfg.init not in ("teacher", "random"):
        require_path(cfg.init, "--init", "'teacher', 'random' or a SAM checkpoint")
    if cfg.held_out_images < 1 or cfg.eval_points < 1:
        raise BadRequest("--held-out-images and --eval-points must be >= 1.", param="--held-out-images")
    tr = Trainer(cfg, "sam-encoder")

    # 2. teacher, student, images, teacher embeddings (computed once)
    try:
        teacher = load_sam(teacher_path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same clear message
        raise BadRequest(f"--teacher {str(teacher_path)!r} is not a SAM / MobileSAM checkpoint: "
                         f"{str(e).splitlines()[0][:200]}", param="--teacher") from None
    teacher.requires_grad_(False).to(tr.device)
    student_sam, info = build_student(teacher, layout, cfg.init)
    train = training_images(cfg)
    held = [D.scene(10_000 + cfg.seed * 100 + k, objects=3 + k % 3) for k in range(cfg.held_out_images)]
    cache = tr.ckpt_dir / "teacher_embeddings.npy"
    train_emb = teacher_embeddings(teacher, train, tr, cache)
    held_emb = teacher_embeddings(teacher, held, tr, None) if tr.is_main else None
    enc, _ = tr.setup(student_sam.image_encoder)

    # 3. distil: student embedding -> teacher embedding, MSE
    frozen_bn = cfg.bn == "frozen" or (cfg.bn == "auto" and cfg.init != "random")
    bns = [m for m in enc.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    def loss_fn(step: int):
        if frozen_bn:  # small batches: keep the running statistics, train the affine parameters
            for m in bns:
                m.eval()
        idx = tr.batch_indices(step, len(train))
        x = torch.from_numpy(np.concatenate([encoder_input(train[i]) for i in idx])).to(tr.device)
        target = torch.from_numpy(np.stack([np.asarray(train_emb[i], np.float32) for i in idx])).to(tr.device)
        pred = enc(x)
        return torch.nn.functional.mse_loss(pred.float(), target), {}

    evaluator = Evaluator(teacher, held, held_emb, cfg.eval_points) if tr.is_main else None

    def ev() -> dict:
        student_sam.image_encoder = tr.unwrap()
        return evaluator(student_sam)

    report = tr.fit(loss_fn, evaluate=ev, stop_after=stop_after)
    if "stopped_at_step" in report:
        return tr.out
    report.update(student=info, teacher=str(teacher_path.absolute()),
                  data={"train_images": len(train), "held_out_images": len(held)})

    # 4. write the upstream-format checkpoint (student encoder + the teacher's prompt encoder / decoder)
    def write(tmp: Path) -> None:
        student_sam.image_encoder = tr.unwrap()
        state = {k: v.detach().cpu().contiguous() for k, v in student_sam.state_dict().items()}
        torch.save(state, str(tmp / CHECKPOINT))

    out = tr.write_output(report, write)
    tr.end()
    return out
