"""Fuzz models.lock / user-lock parsing: any text gives entries or a BadRequest naming the problem.

    python fuzz/fuzz_lock.py -runs=1000000        # seeds: fuzz/corpus/lock
"""

import atheris

from _common import main

with atheris.instrument_imports(include=["edge"]):
    from edge.errors import BadRequest
    from edge.registry.lock import check_model_id, parse_lock, parse_recipes


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        entries = parse_lock(text, "fuzz.lock")
        parse_recipes(text, "fuzz.lock")
    except BadRequest:
        return
    for e in entries:  # what parsed must be safe to build paths from
        check_model_id(e.id)
        for f in e.files:
            assert not f.name.startswith("/") and ".." not in f.name.split("/"), f.name
            assert len(f.sha256) == 64 and f.size >= 0


if __name__ == "__main__":
    main(test_one_input, "lock")
