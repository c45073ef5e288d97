"""Fixtures of the OpenVINO backend's tests: the tiny LCM / MobileSAM exports in the int8-ov precision (NNCF
int8 as OpenVINO IR), built through the real recipes and cached between runs like the session's tiny exports
(NNCF's graph matching takes ~45 s on the tiny UNet and ~20 s on the tiny encoder: paid once per code change)."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from support import CACHE, _export_key, export_lcm, export_sam

OV_CODE = ("export/quantize.py", "export/recipes/lcm_onnx.py", "export/recipes/sam_onnx.py", "export/lcm",
           "export/artifacts.py", "edge/manifest.py")


def _cached(name: str, key: str, build) -> Path:
    root = CACHE / "tiny-ov-exports"
    cache = root / f"{name}-{key}"
    final = cache / name
    if not (final / "edge-model.json").is_file():
        for old in root.glob(f"{name}-*"):
            shutil.rmtree(old, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
        build(work / name)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(work / name, final)
        shutil.rmtree(work, ignore_errors=True)
    return final


def _stable(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.fixture(scope="session")
def ov_exports(tiny_exports) -> dict[str, Path]:
    """{"lcm": fp32 + int8-ov tiny LCM export, "sam": int8-ov tiny MobileSAM (from the session's fp32 export)}."""
    from export.recipes.sam_onnx import build_sam

    libs = ";".join(f"{d}={importlib.metadata.version(d)}" for d in ("openvino", "nncf"))
    key = _stable(_export_key(OV_CODE) + libs)
    lcm = _cached("lcm", key, lambda out: export_lcm(out, "fp32,int8-ov"))
    sam = _cached("sam", _stable(key + tiny_exports["sam"].parent.name),
                  lambda out: export_sam(build_sam("tiny", seed=0), out, "int8-ov", "--from-onnx",
                                         str(tiny_exports["sam"])))
    return {"lcm": lcm, "sam": sam}
