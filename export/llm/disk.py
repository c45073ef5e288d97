"""Disk space of the chat exports: refuse up front, before the first byte, when the output's file
system cannot hold the export (both recipes write an f32 base before quantizing)."""

from __future__ import annotations

import shutil
from pathlib import Path


def weights_bytes(folder: Path) -> int:
    """Bytes of the weight files of a Hugging Face folder (safetensors or pytorch_model*.bin)."""
    return sum(p.stat().st_size for p in list(folder.glob("*.safetensors")) + list(folder.glob("pytorch_model*.bin")))


def check_disk(where: Path, n_params: int, quants: list[str]) -> None:
    """Refuse up front when the output's file system cannot hold the f32 base plus every output."""
    from edge.errors import BadRequest
    from export.llm.gguf_file import BITS

    need = n_params * 4 + sum(n_params * BITS[q] / 8 for q in quants if q != "f32") + (64 << 20)
    probe = where
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise BadRequest(f"not enough disk at {str(probe)!r}: the export needs about {need / 2**20:.0f} MiB "
                         f"(f32 base + {', '.join(quants)}), {free / 2**20:.0f} MiB free. Free space or choose "
                         "another --out.", param="out")
