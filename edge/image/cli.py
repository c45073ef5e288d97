"""`edge-run imagine "a lighthouse at dusk" -o out.png --steps 4 --seed 7 --size 512x512 [--guidance 8]
[--init-image in.png --strength 0.6] [--decoder taesd|vae] [-n 2] [--model ID]` with a per-step bar."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from edge.errors import BadRequest
from edge.image.pipeline import save_png


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("imagine", help="generate images from a prompt in 1-8 steps (LCM)",
                              description="Few-step latent-consistency text-to-image / image-to-image on the CPU. "
                                          "PNG files carry prompt, seed, steps and model id in text chunks.")
    p.add_argument("prompt", help="what to draw, e.g. \"a lighthouse at dusk\"")
    p.add_argument("-o", "--out", default="out.png", metavar="OUT.png",
                   help="output PNG (with -n > 1: OUT-1.png, OUT-2.png ...) [out.png]")
    p.add_argument("--steps", type=int, default=4, help="LCM steps, 1-8 [4]")
    p.add_argument("--seed", type=int, default=None, help="random seed (image i uses seed + i) [random]")
    p.add_argument("--size", default=None, metavar="WxH", help="image size, multiples of 8 [the model's, 512x512]")
    p.add_argument("--guidance", type=float, default=8.0, help="guidance scale (LCM's w embedding) [8]")
    p.add_argument("-n", type=int, default=1, help="number of images [1]")
    p.add_argument("--init-image", default=None, metavar="IN.png", help="start from this image (image-to-image)")
    p.add_argument("--strength", type=float, default=0.6, help="how much to change the init image, (0, 1] [0.6]")
    p.add_argument("--decoder", choices=("vae", "taesd"), default=None,
                   help="latent decoder [EDGE_IMAGE_DECODER / the profile's, else the model's]")
    p.add_argument("-m", "--model", default=None, help="image model id (default: the first installed one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def output_paths(out: str, n: int) -> list[Path]:
    """Check the output path before any work; n > 1 numbers the files."""
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise BadRequest(f"-o {out!r} must end in .png (the image carries its prompt and seed as PNG text).",
                         param="--out")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise BadRequest(f"-o {out!r}: folder {str(parent)!r} does not exist. Create it first.", param="--out")
    if not os.access(parent, os.W_OK):
        raise BadRequest(f"-o {out!r}: folder {str(parent)!r} is not writable. Choose another -o.", param="--out")
    if n == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i + 1}{path.suffix}") for i in range(n)]


def run(args: argparse.Namespace) -> int:
    """Generate and write the images; builds its Runtime from the settings flags."""
    from tqdm import tqdm

    from edge.api import Runtime
    from edge.config import Settings

    # 1. check outputs before any work
    paths = output_paths(args.out, args.n)
    init = Path(args.init_image) if args.init_image else None
    if init is not None and not init.is_file():
        raise BadRequest(f"--init-image {args.init_image!r} does not exist. Give a PNG or JPEG file.",
                         param="--init-image")

    # 2. submit and follow the steps
    with Runtime(settings=Settings.from_args(args)) as runtime:
        handle = runtime.imagine_job(args.prompt, model=args.model, size=args.size, steps=args.steps, n=args.n,
                                     seed=args.seed, guidance_scale=args.guidance, init_image=init,
                                     strength=args.strength, decoder=args.decoder)
        bar = tqdm(total=None, unit="step", desc="imagine", disable=args.no_progress, file=sys.stderr)
        try:
            for step in handle.events():
                if step.total and bar.total != step.total:
                    bar.total = step.total
                bar.set_postfix_str(step.kind)
                bar.update(1)
            images = handle.result()
        except KeyboardInterrupt:
            handle.cancel()
            raise
        finally:
            bar.close()

    # 3. write
    for img, path in zip(images, paths):
        save_png(img, path)
        print(f"{path}  seed={img.info.get('seed')} steps={img.info.get('steps')} model={img.info.get('model')}")
    return 0
