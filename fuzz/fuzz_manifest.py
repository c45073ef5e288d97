"""Fuzz edge-model.json reading: any bytes give a typed manifest or a BadRequest naming the file.

    python fuzz/fuzz_manifest.py -runs=1000000    # seeds: fuzz/corpus/manifest
"""

import atheris

from _common import main

with atheris.instrument_imports(include=["edge"]):
    from edge.errors import BadRequest
    from edge.manifest import Manifest, parse


def test_one_input(data: bytes) -> None:
    try:
        doc = parse(data, "fuzz/edge-model.json")
    except BadRequest:
        return
    assert isinstance(doc, Manifest)
    n = doc.loaded_bytes()
    assert n is None or n > 0


if __name__ == "__main__":
    main(test_one_input, "manifest")
