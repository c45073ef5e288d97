"""Fuzz /v1/segment's door: body parsing (JSON + typed body), then SegmentRequest.check (image and mask
decoding, prompt parsing), as the route and Runtime.segment_job run them.
Any input gives a parsed request or a BadRequest / PayloadTooLarge; never another exception.

    python fuzz/fuzz_segment.py -runs=1000000 -max_len=65536   # seeds: fuzz/corpus/segment
The first byte picks the target: even = image bytes (+ prompt from the tail), odd = a JSON body.
"""

import atheris

from _common import main

with atheris.instrument_imports(include=["edge"]):
    from edge.errors import BadRequest
    from edge.segment import preprocess as pre
    from edge.server.bodies import parse_model
    from edge.segment.request import SegmentRequest
    from edge.server.segment_routes import MAX_JSON_VALUES, SegmentBody, _b64


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0], data[1:]
    try:
        if mode % 2 == 0:
            fdp = atheris.FuzzedDataProvider(rest)
            points = [[fdp.ConsumeRegularFloat(), fdp.ConsumeRegularFloat(), fdp.ConsumeIntInRange(-1, 2)]
                      for _ in range(fdp.ConsumeIntInRange(0, 3))]
            box = [fdp.ConsumeRegularFloat() for _ in range(4)] if fdp.ConsumeBool() else None
            img = pre.load_image(fdp.ConsumeBytes(fdp.remaining_bytes()))
            pre.parse_prompt(points, box, img.original_size, img.scale)
        else:
            body = parse_model(rest, SegmentBody, MAX_JSON_VALUES)
            SegmentRequest(image=_b64(body.image, "image") if body.image is not None else None,
                           image_id=body.image_id, points=body.points, box=body.box, multimask=body.multimask,
                           prev_mask=_b64(body.prev_mask, "prev_mask") if body.prev_mask is not None else None
                           ).check()
    except BadRequest:  # PayloadTooLarge is one
        return


if __name__ == "__main__":
    main(test_one_input, "segment")
