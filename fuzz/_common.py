"""Shared by the atheris harnesses: run a harness with its seed corpus, allowing only edge's typed errors."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(test_one_input, name: str) -> None:
    """atheris.Setup + Fuzz with ``fuzz/corpus/<name>`` as the seed corpus (a copy of it, so the corpus
    in git stays the hand-made seeds; pass your own corpus dir to keep what the fuzzer finds)."""
    import shutil
    import tempfile

    import atheris

    argv = list(sys.argv)
    if not any(not a.startswith("-") for a in argv[1:]):
        work = Path(tempfile.mkdtemp(prefix=f"edge-fuzz-{name}-"))
        for p in (ROOT / "fuzz" / "corpus" / name).glob("*"):
            shutil.copy(p, work / p.name)
        argv.append(str(work))
    os.environ.setdefault("EDGE_OFFLINE", "1")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
