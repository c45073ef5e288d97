"""NPU fixtures: tiny seeded MobileSAM and LCM exported ONCE to fp32 (the real upstream / diffusers
architectures through the recipes' own export functions), converted ONCE by `export npu` (A16W8), and
a compile cache for the QNN HTP simulator.

The compiled EP-context graphs are kept between runs in $EDGE_TEST_CACHE/npu-cache (the exports are
deterministic, so the same files hash to the same keys): the first run on a machine pays the QNN
compiles (minutes for the 1024x1024 SAM encoder), later runs load them. The exports themselves are kept
in $EDGE_TEST_CACHE/builds (tests/support.py cached_build: rebuilt when code they ran changes). Tests of the cache itself use
their own fresh folders.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from support import CACHE, THREADS, open_runtime, serve_in_thread  # noqa: F401 (THREADS: the npu tests import it here)

SAM_ID = "mobilesam-tiny-npu"
LCM_ID = "lcm-tiny-npu"
CRASH_ID = "lcm-tiny-npu-crashing"
CHAT_ID = "tiny-llama-npu"
CONTEXT = 64       # the tiny chat model's static context
SIZE = 64          # the tiny LCM's static image side
CALIB = 3          # calibration images (sam) / prompts (lcm): enough for these tiny models, quick


def have_qnn() -> bool:
    try:
        from edge.npu import eps

        return eps.npu_device() is not None
    except Exception:  # noqa: BLE001
        return False


needs_qnn = pytest.mark.skipif(not have_qnn(), reason="onnxruntime-qnn is not installed (pip install 'edge-run[npu]')")


@pytest.fixture(scope="session", autouse=True)
def npu_cache_dir():
    """The persistent compile cache (EDGE_NPU_CACHE) for the whole session."""
    d = CACHE / "npu-cache"
    d.mkdir(parents=True, exist_ok=True)
    old = os.environ.get("EDGE_NPU_CACHE")
    os.environ["EDGE_NPU_CACHE"] = str(d)
    yield d
    if old is None:
        os.environ.pop("EDGE_NPU_CACHE", None)
    else:
        os.environ["EDGE_NPU_CACHE"] = old


def _manifest_files(folder: Path, manifest: dict) -> None:
    from export.artifacts import MANIFEST, file_table, write_json

    manifest["files"] = file_table(folder)
    write_json(folder / MANIFEST, manifest)


EXPORT_NPU = ("export", "npu")  # the CLI words the build runs (tests/test_layout.py looks for them as a literal)
NPU_BUILD = f"""
import torch
torch.set_num_threads({THREADS})
from edge.cli import main
from export.npu import tiny

def npu(src, out, *extra):
    code = main([*{EXPORT_NPU!r}, str(src), "--out", str(out), "--quant", "a16w8", "--verify-devices", "none",
                 "--threads", "{THREADS}", *extra])
    assert code == 0, f"edge-run export npu {{src}} failed ({{code}})"

tiny.sam_fp32(OUT / "sam" / "fp32")
npu(OUT / "sam" / "fp32", OUT / "sam" / "npu", "--calib-limit", "{CALIB}")
tiny.lcm_fp32(OUT / "lcm" / "fp32", size={SIZE})
npu(OUT / "lcm" / "fp32", OUT / "lcm" / "npu", "--size", "{SIZE}", "--calib-limit", "{CALIB}")
tiny.chat_fp32(OUT / "chat" / "fp32")
npu(OUT / "chat" / "fp32", OUT / "chat" / "npu", "--context", "{CONTEXT}", "--calib-limit", "{CALIB}")
"""
"""The tiny exports behind the fixtures below, each through the command or export function a user runs."""
NPU_BUILD_DISTS = ("torch", "onnx", "onnxruntime", "onnxruntime-qnn", "onnxscript", "diffusers", "transformers",
                   "tokenizers", "mobilesam-mirror", "timm", "open_clip_torch", "scikit-image", "numpy")


@pytest.fixture(scope="session")
def npu_exports() -> Path:
    """sam/, lcm/ and chat/, each holding fp32/ (the tiny seeded model: upstream MobileSAM, the diffusers /
    transformers LCM, a random Llama through `export llm-onnx`) and npu/ (`edge-run export npu` of it, A16W8).
    Built once per version of the code that builds them and kept in the test cache (the exports are
    deterministic: the QNN compile cache already hits on them run after run)."""
    from support import cached_build

    return cached_build("npu-exports", NPU_BUILD, dists=NPU_BUILD_DISTS)


@pytest.fixture(scope="session")
def sam_fp32(npu_exports) -> Path:
    """encoder.onnx + decoder.onnx of the tiny upstream MobileSAM (seed 0), fp32, with a manifest."""
    return npu_exports / "sam" / "fp32"


@pytest.fixture(scope="session")
def sam_npu(npu_exports) -> Path:
    return npu_exports / "sam" / "npu"


@pytest.fixture(scope="session")
def lcm_fp32(npu_exports) -> Path:
    """The tiny LCM (diffusers UNet / VAE / TAESD, transformers CLIP; seed 0), fp32."""
    return npu_exports / "lcm" / "fp32"


@pytest.fixture(scope="session")
def lcm_npu(npu_exports) -> Path:
    return npu_exports / "lcm" / "npu"


@pytest.fixture(scope="session")
def chat_fp32(npu_exports) -> Path:
    """The tiny random Llama (transformers) exported by `edge-run export llm-onnx --quant fp32`."""
    return npu_exports / "chat" / "fp32"


@pytest.fixture(scope="session")
def chat_npu(npu_exports) -> Path:
    return npu_exports / "chat" / "npu"


# -- an EDGE_HOME with both installed, a Runtime on --device npu and a server over it ---------------

@pytest.fixture(scope="session")
def npu_home(sam_npu, lcm_npu, lcm_npu_crashing, chat_npu, chat_fp32, tmp_path_factory) -> Path:
    from edge.config import Settings
    from edge.registry import add_local_model

    home = tmp_path_factory.mktemp("edge-home-npu")
    s = Settings.from_env(env={}, home=home)
    add_local_model(s, sam_npu, model_id=SAM_ID, task="segment", fmt="onnx", license="Apache-2.0",
                    source={"recipe": "npu", "from": "sam tiny"})
    add_local_model(s, lcm_npu, model_id=LCM_ID, task="image", fmt="onnx", license="Apache-2.0",
                    source={"recipe": "npu", "from": "lcm tiny"})
    add_local_model(s, chat_npu, model_id=CHAT_ID, task="chat", fmt="onnx", license="Apache-2.0",
                    source={"recipe": "npu", "from": "llm-onnx tiny-llama"})
    add_local_model(s, chat_fp32, model_id=CHAT_ID + "-fp32", task="chat", fmt="onnx", license="Apache-2.0",
                    source={"recipe": "llm-onnx", "random_init": "tiny-llama"})
    add_local_model(s, lcm_npu_crashing, model_id=CRASH_ID, task="image", fmt="onnx", license="Apache-2.0",
                    source={"recipe": "npu", "from": "lcm tiny + the 5-D Tile that crashes libQnnHtp.so"})
    return home


@pytest.fixture(scope="session")
def npu_runtime(npu_home):
    with open_runtime(npu_home, device="npu") as rt:
        yield rt


@pytest.fixture(scope="session")
def npu_server(npu_runtime):
    with serve_in_thread(npu_runtime) as url:
        yield url


# -- small graphs for the device / cache / crash tests ----------------------------------------------

def qdq_artifact(folder: Path, fp32_model, feeds: list[dict], name: str = "model.onnx", scheme: str = "a8w8") -> Path:
    """Quantize an fp32 onnx.ModelProto into ``folder/name`` and write a manifest declaring it an NPU
    component (static shapes)."""
    import onnx

    from export.npu.quant import quantize_qdq

    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(fp32_model, str(folder / "fp32.onnx"))
    quantize_qdq(folder / "fp32.onnx", folder / name, feeds, scheme)
    (folder / "fp32.onnx").unlink()
    (folder / "edge-model.json").write_text(json.dumps({"task": "segment", "format": "onnx", "npu": {
        "schema": 1, "components": {name: {"role": "test", "quant": scheme, "static": True, "device": "npu"}}}}))
    return folder / name


def tile5d_model():
    """x -> Unsqueeze -> Tile(all ones, 5-D) -> Reshape -> + b: the pattern of upstream MobileSAM's
    repeat_interleave that makes libQnnHtp.so segfault at graph finalisation (a real crash)."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array([1], np.int64), "axis"),
             numpy_helper.from_array(np.ones(5, np.int64), "reps"),
             numpy_helper.from_array(np.array([-1, 16, 8, 8], np.int64), "shape"),
             numpy_helper.from_array(np.linspace(-1, 1, 1024, dtype=np.float32).reshape(1, 16, 8, 8), "b")]
    nodes = [helper.make_node("Unsqueeze", ["x", "axis"], ["u"]), helper.make_node("Tile", ["u", "reps"], ["t"]),
             helper.make_node("Reshape", ["t", "shape"], ["r"]), helper.make_node("Add", ["r", "b"], ["y"])]
    g = helper.make_graph(nodes, "tile5d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def conv_model(erf: bool = False, seed: int = 0):
    """A small conv -> ReLU -> conv net (exported by torch); ``erf`` puts a bare ``erf`` there instead, an
    operator the HTP lacks (exact GELU itself is fused into HTP's Gelu by the QNN preprocessing)."""
    import io

    import onnx
    import torch

    torch.manual_seed(seed)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.b = torch.nn.Conv2d(16, 8, 3, padding=1)

        def forward(self, x):
            h = self.a(x)
            h = torch.erf(h) if erf else torch.relu(h)
            return self.b(h)

    buf = io.BytesIO()
    torch.onnx.export(Net().eval(), (torch.zeros(1, 3, 32, 32),), buf, input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "npu-cache"
    monkeypatch.setenv("EDGE_NPU_CACHE", str(d))
    return d


def inject_tile5d(path: Path, tensor: str) -> None:
    """Insert Unsqueeze -> Tile(all ones, 5-D) -> Reshape, each wrapped in the tensor's own Q/DQ, right
    after the DequantizeLinear of ``tensor`` in a QDQ model: the same values, but the graph now holds the
    pattern that crashes libQnnHtp.so (used to make a real crashing NPU model for the front doors)."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    dq = next(n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in
              {q.output[0] for q in g.node if q.op_type == "QuantizeLinear" and q.input[0] == tensor})
    scale, zp = dq.input[1], dq.input[2]
    src = dq.output[0]
    shape = next(list(d.dim_value for d in i.type.tensor_type.shape.dim) for i in g.input if i.name == tensor)
    g.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), "crash_axis"),
                          numpy_helper.from_array(np.ones(len(shape) + 1, np.int64), "crash_reps"),
                          numpy_helper.from_array(np.array(shape, np.int64), "crash_shape")])
    domain = dq.domain
    new, cur = [], src
    for k, (op, extra) in enumerate((("Unsqueeze", "crash_axis"), ("Tile", "crash_reps"), ("Reshape", "crash_shape"))):
        out, qo, dqo = f"crash_{k}", f"crash_{k}_q", f"crash_{k}_dq"
        new += [helper.make_node(op, [cur, extra], [out], name=f"crash_{op}"),
                helper.make_node("QuantizeLinear", [out, scale, zp], [qo], name=f"crash_{k}_Q", domain=domain),
                helper.make_node("DequantizeLinear", [qo, scale, zp], [dqo], name=f"crash_{k}_DQ", domain=domain)]
        cur = dqo
    for n in g.node:
        if n is not dq:
            n.input[:] = [cur if i == src else i for i in n.input]
    at = list(g.node).index(dq) + 1
    for k, n in enumerate(new):
        g.node.insert(at + k, n)
    onnx.save(m, str(path))


@pytest.fixture(scope="session")
def lcm_npu_crashing(lcm_npu, tmp_path_factory) -> Path:
    """A copy of the LCM NPU artifact whose UNet holds the 5-D Tile that crashes libQnnHtp.so."""
    from export.artifacts import MANIFEST

    out = tmp_path_factory.mktemp("npu-lcm-crash") / "npu"
    shutil.copytree(lcm_npu, out)
    inject_tile5d(out / "a16w8" / "unet.onnx", "sample")
    _manifest_files(out, json.loads((out / MANIFEST).read_text()))
    return out
