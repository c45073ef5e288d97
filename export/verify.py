"""Compare an exported artifact with its PyTorch source: generic metrics and report helpers.

Every recipe verifies what it wrote before the artifact folder is renamed into place, and writes the
numbers to ``report.json`` beside the artifacts (see :func:`write_report`). The metrics are plain
numpy so they can also be used on runtime outputs in tests and benchmarks.
"""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute element-wise difference (shapes must match)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.mean(np.abs(a - b))) if a.size else 0.0


def relative_error(actual: np.ndarray, reference: np.ndarray) -> float:
    """||actual - reference|| / ||reference|| (L2; 0 when both are zero)."""
    a, r = np.asarray(actual, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    den = float(np.linalg.norm(r))
    num = float(np.linalg.norm(a - r))
    return num / den if den else (0.0 if num == 0 else math.inf)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / den if den else 1.0


def psnr(actual: np.ndarray, reference: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB: 10 * log10(peak**2 / MSE), inf when the arrays are equal.

    The peak ``data_range`` defaults to the nominal range of the reference's type for integer arrays
    (255 for uint8 images, as image-quality tools define it: a dark image is not penalised for not
    using the whole range) and, for float tensors, which have no nominal range, to the reference's
    max - min."""
    ref = np.asarray(reference)
    a, r = np.asarray(actual, dtype=np.float64), ref.astype(np.float64)
    mse = float(np.mean((a - r) ** 2))
    if mse == 0:
        return math.inf
    if data_range is not None:
        rng = float(data_range)
    elif np.issubdtype(ref.dtype, np.integer):
        info = np.iinfo(ref.dtype)
        rng = float(info.max) - (float(info.min) if ref.size and ref.min() < 0 else 0.0)
    else:
        rng = float(r.max() - r.min())
    return 10.0 * math.log10((rng * rng) / mse) if rng > 0 else -math.inf


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def compare_arrays(actual: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """The usual numbers for a tensor comparison, JSON-ready."""
    return {
        "max_abs_diff": max_abs_diff(actual, reference),
        "mean_abs_diff": mean_abs_diff(actual, reference),
        "relative_error": relative_error(actual, reference),
        "cosine": cosine_similarity(actual, reference),
        "psnr_db": finite(psnr(actual, reference)),
    }


def finite(x: float) -> float | str:
    """``x``, or "inf" / "-inf" for an infinite one (strict JSON, which edge-model.json is, has no Infinity)."""
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def environment() -> dict[str, Any]:
    """Library versions worth recording beside a verification."""
    env: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine()}
    for name in ("numpy", "onnx", "onnxruntime", "torch"):
        try:
            mod = __import__(name)
            env[name] = getattr(mod, "__version__", "?")
        except ImportError:
            pass
    return env


def make_report(kind: str, checks: dict[str, Any], *, passed: bool, thresholds: dict[str, float],
                **extra: Any) -> dict[str, Any]:
    """A report.json body: what was compared, the numbers, the thresholds and whether they held."""
    return {"kind": kind, "passed": bool(passed), "thresholds": thresholds, "checks": checks,
            "environment": environment(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **extra}


def write_report(folder: Path, report: dict[str, Any], name: str = "report.json") -> Path:
    path = Path(folder) / name
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A plain-text table (for reports printed by recipes and bench scripts)."""
    if not rows:
        return ""
    columns = columns or list(rows[0])

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    widths = [max(len(c), *(len(cell(r.get(c, ""))) for r in rows)) for c in columns]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(cell(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)))
    return "\n".join(out)
