"""Fuzz edge-model.json reading: any bytes give a manifest dict or a BadRequest naming the file.

    python fuzz/fuzz_manifest.py -runs=1000000    # seeds: fuzz/corpus/manifest
"""

import atheris

from _common import main

with atheris.instrument_imports(include=["edge"]):
    from edge.errors import BadRequest
    from edge.registry.manifest import load_bytes, parse_manifest


def test_one_input(data: bytes) -> None:
    try:
        doc = parse_manifest(data, "fuzz/edge-model.json")
    except BadRequest:
        return
    assert isinstance(doc, dict)
    n = load_bytes(doc)
    assert n is None or n > 0


if __name__ == "__main__":
    main(test_one_input, "manifest")
