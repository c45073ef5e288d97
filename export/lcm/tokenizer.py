"""CLIP's tokenizer for the LCM export: built with the ``tokenizers`` library from the open_clip BPE
file (``--random-init``) or taken from a diffusers pipeline, written as tokenizer.json (what edge/image
reads) plus vocab.json / merges.txt (what diffusers' CLIPTokenizer reads)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode map (order matters for the vocabulary ids)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def open_clip_bpe_path() -> Path:
    """bpe_simple_vocab_16e6.txt.gz shipped inside the open_clip_torch wheel."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("open_clip_torch is not installed; pip install 'edge-run[export]'.")
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        raise RuntimeError(f"{path} is missing from the open_clip_torch install.")
    return path


def clip_vocab_from_bpe(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary (49408 entries) and merges from the open_clip BPE file, in CLIP's id order."""
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    units = list(bytes_to_unicode().values())
    words = units + [u + "</w>" for u in units] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {w: i for i, w in enumerate(words)}, merges


def build_clip_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]):
    """A `tokenizers` Tokenizer with CLIP's normalizer, pre-tokenizer, BPE and BOS/EOS template,
    padded with <|endoftext|> to 77 like Stable Diffusion's tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    tok = Tokenizer(BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
                        fuse_unk=False, unk_token="<|endoftext|>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(("<|endoftext|>", vocab["<|endoftext|>"]),
                                                      ("<|startoftext|>", vocab["<|startoftext|>"]),
                                                      trim_offsets=False, add_prefix_space=False)
    tok.enable_truncation(max_length=77)
    tok.enable_padding(length=77, pad_id=vocab["<|endoftext|>"], pad_token="<|endoftext|>")
    return tok


def write_tokenizer(folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> Path:
    """tokenizer.json (what edge/image reads) plus vocab.json / merges.txt (what diffusers reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    build_clip_tokenizer(vocab, merges).save(str(folder / "tokenizer.json"))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return folder / "tokenizer.json"


def read_merges(path: Path) -> list[tuple[str, str]]:
    """The merges of a merges.txt file (its ``#version`` header skipped)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    return [tuple(x.split()) for x in lines if x and not x.startswith("#version")]


def read_tokenizer(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """vocab and merges of a folder written by :func:`write_tokenizer`."""
    return json.loads((folder / "vocab.json").read_text()), read_merges(folder / "merges.txt")


def tokenizer_merges(tok) -> list[tuple[str, str]]:
    """Merges of a transformers CLIP tokenizer (from its merges.txt, else its tokenizer.json)."""
    files = getattr(tok, "vocab_files_names", {})
    folder = Path(getattr(tok, "name_or_path", ""))
    merges_file = folder / files.get("merges_file", "merges.txt")
    if merges_file.exists():
        return read_merges(merges_file)
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    return [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in model["merges"]]
