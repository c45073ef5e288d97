"""Fuzz /v1/segment's door: body parsing (JSON + typed body), image decoding and prompt parsing.
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
    from edge.server.segment_routes import MAX_JSON_VALUES, SegmentBody, _b64, _prev_mask


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
            if body.image is not None:
                pre.load_image(_b64(body.image, "image"))
            _prev_mask(body.prev_mask)
            if body.points or body.box:
                pre.parse_prompt(body.points, body.box, (480, 640))
    except BadRequest:  # PayloadTooLarge is one
        return


if __name__ == "__main__":
    main(test_one_input, "segment")
