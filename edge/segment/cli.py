"""`edge-run segment photo.jpg --point 320,240 [--point 100,80,0] [--box 10,10,200,220] -o mask.png
[--overlay overlay.png] [--json masks.json] [--model ID]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.errors import BadRequest
from edge.segment import postprocess as post
from edge.segment import preprocess as pre


def _numbers(text: str, flag: str, counts: tuple[int, ...], example: str) -> list[float]:
    parts = [p for p in text.replace(" ", "").split(",") if p != ""]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise BadRequest(f"{flag} {text!r} must be numbers separated by commas, e.g. {flag} {example}.",
                         param=flag) from None
    if len(vals) not in counts:
        raise BadRequest(f"{flag} {text!r} needs {' or '.join(map(str, counts))} numbers, e.g. {flag} {example}.",
                         param=flag)
    return vals


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("segment", help="segment an object from point / box prompts (MobileSAM)",
                              description="Click-to-mask with MobileSAM: points (x,y[,label]; label 1 = object, "
                                          "0 = background) and/or a box, in image pixels.")
    p.add_argument("image", help="the photo (PNG, JPEG, WebP, BMP; grayscale, RGBA and 16-bit are converted)")
    p.add_argument("--point", action="append", default=[], metavar="X,Y[,LABEL]",
                   help="a prompt point; repeat for more (label 1 = object [default], 0 = background)")
    p.add_argument("--box", default=None, metavar="X0,Y0,X1,Y1", help="a box prompt around the object")
    p.add_argument("-o", "--out", default=None, metavar="MASK.png", help="write the best mask as a PNG (255 = object)")
    p.add_argument("--overlay", default=None, metavar="OVERLAY.png", help="write the photo with the mask drawn on it")
    p.add_argument("--json", default=None, metavar="MASKS.json",
                   help="write all masks as COCO-style JSON (RLE, polygons, bbox, area, score)")
    mm = p.add_mutually_exclusive_group()
    mm.add_argument("--multimask", dest="multimask", action="store_const", const=True, default=None,
                    help="predict three candidate masks and keep the best (default for a single point)")
    mm.add_argument("--single", dest="multimask", action="store_const", const=False,
                    help="predict one mask (default for several points or a box)")
    p.add_argument("-m", "--model", default=None, help="segment model id (default: the first installed one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Segment and write the requested outputs; builds its Runtime from the settings flags."""
    from edge.api import Runtime
    from edge.config import Settings

    # 1. check inputs and outputs before any work
    points = [_numbers(t, "--point", (2, 3), "320,240 or 100,80,0") for t in args.point]
    box = _numbers(args.box, "--box", (4,), "10,10,200,220") if args.box else None
    if not points and box is None:
        raise BadRequest("give at least one --point X,Y[,LABEL] or a --box X0,Y0,X1,Y1.", param="--point")
    out = post.check_output_path(args.out, suffixes=(".png",), param="--out") if args.out else None
    overlay = post.check_output_path(args.overlay, suffixes=(".png",), param="--overlay") if args.overlay else None
    js = post.check_output_path(args.json, suffixes=(".json",), param="--json") if args.json else None
    img = pre.load_image(Path(args.image))

    # 2. segment
    with Runtime(settings=Settings.from_args(args)) as runtime:
        res = runtime.segment(img, points=points, box=box, multimask=args.multimask, model=args.model)

    # 3. write
    best = res.masks[res.best]
    if out:
        post.save_mask_png(best.mask, out)
    if overlay:
        s = res.scale
        post.save_overlay_png(img.rgb, best.mask, overlay,
                              points=[(p[0] * s, p[1] * s, *p[2:]) for p in points],
                              box=[v * s for v in box] if box else None)
    if js:
        post.save_json(post.coco_json(res, file_name=Path(args.image).name), js)

    # 4. report
    h, w = res.size
    x0, y0, x1, y1 = best.bbox
    note = ""
    if res.scale != 1.0:
        oh, ow = res.original_size
        note = (f" (image {ow}x{oh} was downscaled to {w}x{h}: the limit is {pre.MAX_SIDE} px on the longest "
                "side; masks are at the downscaled size)")
    print(f"mask {res.best + 1}/{len(res.masks)}: score {best.score:.3f}, area {best.area} px "
          f"({100.0 * best.area / (h * w):.1f}% of {w}x{h}), bbox {x0},{y0},{x1},{y1}; "
          f"{'encoded + decoded' if res.encoder_ran else 'decoded (cached embedding)'} in "
          f"{res.timings.get('total_s', 0.0):.2f} s{note}")
    for path in (out, overlay, js):
        if path:
            print(f"wrote {path}")
    sys.stdout.flush()
    return 0
