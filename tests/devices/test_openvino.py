"""--device openvino: the OpenVINO runtime (the real `openvino` package, no mocks) running the tiny exports
through edge.devices.make_session -- images within 2/255 of onnxruntime fp32, masks IoU >= 0.99 against
onnxruntime, OpenVINO's compiled-model cache under EDGE_HOME (second load from it, faster), the precision
setting, clear DeviceErrors, `edge-run devices`, and the int8-ov export precision (NNCF int8 as OpenVINO IR)
verified by its recipe and loaded by the runtime."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge.errors import DeviceError
from support import ROOT, THREADS, drain

pytest.importorskip("openvino")  # the dev extra installs it; the runtime itself works without it

# bf16 where the CPU has it (AVX-512 BF16 / AMX): ~3 significant digits per activation. Held: the tiny LCM's image
# within PSNR 30 dB of onnxruntime fp32 (f32: within 2/255 like every fp32 path), SAM masks IoU >= 0.97.
BF16_MIN_PSNR = 30.0
BF16_MIN_IOU = 0.97


@pytest.fixture(scope="module", autouse=True)
def ov_home(tmp_path_factory):
    """An EDGE_HOME of the module's own (files outside a store are not cached: nothing may appear in it)."""
    home = tmp_path_factory.mktemp("ov-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGE_HOME", str(home))
        mp.delenv("EDGE_OV_PRECISION", raising=False)
        yield home


@pytest.fixture(scope="module")
def stored(tiny_exports, ov_home) -> dict[str, Path]:
    """The tiny fp32 exports copied into the module home's store: what later tests load comes from the compiled
    models earlier tests cached (as a second run would). The cache test uses a store of its own."""
    out = {}
    for name in ("lcm", "sam"):
        out[name] = ov_home / "models" / f"{name}-tiny"
        shutil.copytree(tiny_exports[name], out[name])
    return out


def _image(folder: Path, device: str, precision: str = "fp32", decoder: str = "vae") -> np.ndarray:
    from edge.image.engine import components_from_manifest
    from edge.image.pipeline import LCMPipeline
    from edge.image.request import ImageRequest
    from edge.manifest import read

    comps = components_from_manifest(read(folder, task="image"), folder, precision=precision, threads=THREADS,
                                     device=device)
    _, images = drain(LCMPipeline(comps).generate_steps(
        ImageRequest("a lighthouse at dusk", 64, 64, steps=2, seed=3, decoder=decoder).check()))
    return np.asarray(images[0]).astype(np.int16)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    from export.verify import psnr

    return psnr(a.astype(np.uint8), b.astype(np.uint8))


# -- the backend ------------------------------------------------------------------------------------

def test_openvino_is_a_device_and_cpu_stays_onnxruntime(stored):
    from edge.devices import make_session
    from edge.npu import eps
    from edge.ov_session import OpenVinoSession

    found = eps.discover()
    assert found["openvino"].provider == "OpenVINO runtime" and found["openvino"].source == "openvino"
    assert "openvino" in eps.present_names() and "openvino" not in eps.plugin_errors()
    unet = stored["lcm"] / "fp32" / "unet.onnx"
    assert isinstance(make_session(unet, threads=THREADS, device="cpu"), ort.InferenceSession)
    assert isinstance(make_session(unet, threads=THREADS, device="auto"), ort.InferenceSession)  # .onnx: not auto-picked
    sess = make_session(unet, threads=THREADS, device="openvino")
    assert isinstance(sess, OpenVinoSession)
    assert sess.edge_placement["device"] == "openvino" and sess.edge_placement["threads"] == THREADS
    ref = ort.InferenceSession(str(unet), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in sess.get_inputs()] == [(i.name, i.type) for i in ref.get_inputs()]
    assert [o.name for o in sess.get_outputs()] == [o.name for o in ref.get_outputs()]


def test_lcm_images_match_onnxruntime_fp32(stored):
    """OpenVINO's default precision against onnxruntime fp32: within 2/255 where it is f32 (this CPU without
    AVX-512 BF16 / AMX), within BF16_MIN_PSNR where it is bf16."""
    from edge.devices import make_session

    folder = stored["lcm"]
    precision = make_session(folder / "fp32" / "text_encoder.onnx", threads=1, device="openvino").edge_placement[
        "precision"]
    for decoder in ("vae", "taesd"):
        cpu, ov = _image(folder, "cpu", decoder=decoder), _image(folder, "openvino", decoder=decoder)
        if precision == "f32":
            assert np.abs(cpu - ov).max() <= 2, (decoder, np.abs(cpu - ov).max())
        else:
            assert _psnr(cpu, ov) >= BF16_MIN_PSNR, (precision, decoder, _psnr(cpu, ov))


def test_sam_masks_match_onnxruntime(stored):
    from edge.segment import preprocess as pre
    from edge.segment.predictor import OnnxSamPredictor
    from export.recipes.sam_onnx import prompt_cases, synthetic_image
    from export.verify import iou

    folder = stored["sam"]
    cpu = OnnxSamPredictor.from_files(folder / "encoder.onnx", folder / "decoder.onnx", threads=THREADS, device="cpu")
    ov = OnnxSamPredictor.from_files(folder / "encoder.onnx", folder / "decoder.onnx", threads=THREADS,
                                     device="openvino")
    assert ov.encoder.edge_placement["device"] == "openvino" and 1 in ov._decoders  # the one-thread decoder too
    # the decoder's mask logits are cut at 0: it stays f32 where OpenVINO's default is bf16 (in bf16 its masks
    # fell to IoU 0.963 against 0.98 with the bf16 encoder and the f32 decoder)
    assert {d.edge_placement["precision"] for d in (ov.decoder, *ov._decoders.values())} == {"f32"}
    from edge.devices import plan  # and `edge-run devices` says so before anything is compiled

    assert "precision f32 (kept: this graph's outputs are cut at a threshold" in \
        plan(folder / "decoder.onnx", "openvino", keep_f32=True)["why"]
    rgb = synthetic_image(0)
    loaded = pre.load_image(rgb)
    a, b = cpu.encode(loaded), ov.encode(loaded)
    f32 = ov.encoder.edge_placement["precision"] == "f32"  # else bf16 / f16: OpenVINO's default on that CPU
    assert np.linalg.norm(a.features - b.features) / np.linalg.norm(a.features) < (1e-4 if f32 else 2e-2)
    h, w = rgb.shape[:2]
    for case in prompt_cases(h, w):
        prompt = pre.parse_prompt(case["points"], case["box"], (h, w))
        ma, _ = cpu.decode(a, prompt, multimask=case["multimask"])
        mb, _ = ov.decode(b, prompt, multimask=case["multimask"])
        for x, y in zip(ma, mb):
            assert iou(x.mask, y.mask) >= (0.99 if f32 else BF16_MIN_IOU), case["name"]
    ov.set_threads(1)
    m1, _ = ov.decode(b, pre.parse_prompt(prompt_cases(h, w)[0]["points"], None, (h, w)))
    assert m1 and m1[0].mask.shape == (h, w)


def test_compiled_models_are_cached_in_the_store_home_and_the_second_load_is_faster(tiny_exports, tmp_path, ov_home):
    from edge.devices import make_session

    model_dir = tmp_path / "store" / "models" / "lcm-tiny"  # a file in a store: its home's cache
    shutil.copytree(tiny_exports["lcm"] / "fp32", model_dir)
    cache = tmp_path / "store" / "cache" / "openvino"
    t0 = time.perf_counter()
    first = make_session(model_dir / "unet.onnx", threads=THREADS, device="openvino")
    t1 = time.perf_counter()
    second = make_session(model_dir / "unet.onnx", threads=THREADS, device="openvino")
    t2 = time.perf_counter()
    assert first.edge_placement["cache"] == str(cache) and any(cache.iterdir())
    assert first.edge_placement["loaded_from_cache"] is False and second.edge_placement["loaded_from_cache"] is True
    assert t2 - t1 < t1 - t0, (t1 - t0, t2 - t1)
    before = sorted(cache.iterdir())
    outside = make_session(tiny_exports["sam"] / "decoder.onnx", threads=1, device="openvino")
    assert outside.edge_placement["cache"] is None and sorted(cache.iterdir()) == before  # not in a store: no blob


def test_precision_setting(stored, monkeypatch):
    from edge.devices import make_session

    from edge.ov_session import core, default_precision

    has_bf16 = "BF16" in [str(c) for c in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    dec = stored["sam"] / "decoder.onnx"
    assert make_session(dec, threads=1, device="openvino").edge_placement["precision"] == default_precision()
    assert default_precision() in (("bf16",) if has_bf16 else ("f32", "f16"))  # f16: ARM CPUs with fp16 arithmetic
    monkeypatch.setenv("EDGE_OV_PRECISION", "f32")
    p = make_session(dec, threads=1, device="openvino").edge_placement
    assert p["precision"] == "f32" and p["precision_source"] == "EDGE_OV_PRECISION"
    monkeypatch.setenv("EDGE_OV_PRECISION", "bf16")  # OpenVINO computes f32 where the CPU has no bf16
    assert make_session(dec, threads=1, device="openvino").edge_placement["precision"] == ("bf16" if has_bf16 else "f32")
    monkeypatch.setenv("EDGE_OV_PRECISION", "int4")
    with pytest.raises(DeviceError, match="EDGE_OV_PRECISION='int4' is not one of f32, bf16, f16"):
        make_session(dec, threads=1, device="openvino")


def test_clear_errors_for_a_missing_device_an_ir_on_onnxruntime_and_a_missing_openvino(tiny_exports, ov_exports):
    from edge.devices import make_session

    with pytest.raises(DeviceError) as e:
        make_session(tiny_exports["sam"] / "decoder.onnx", threads=1, device="coreml")
    assert "present: cpu" in e.value.message and "openvino" in e.value.message and "--device auto" in e.value.message
    ir = ov_exports["lcm"] / "int8-ov" / "unet.xml"
    with pytest.raises(DeviceError, match="OpenVINO IR .* Use --device openvino"):
        make_session(ir, threads=1, device="cpu")
    # a real process where `import openvino` fails (the runtime's own dependencies do not include it)
    code = ("import sys; sys.modules['openvino'] = None\n"
            "from edge.devices import make_session\nfrom edge.errors import DeviceError\n"
            "for path, device in ((sys.argv[1], 'openvino'), (sys.argv[2], 'auto')):\n"
            "    try:\n        make_session(path, threads=1, device=device)\n"
            "    except DeviceError as e:\n        print(e.message)\n"
            "    else:\n        print('no error')\n"
            "from edge.npu import eps\nprint(sorted(eps.present_names()), eps.plugin_errors().get('openvino'))\n")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_exports["sam"] / "decoder.onnx"), str(ir)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and len(lines) == 3, out.stderr[-2000:]
    assert "pip install openvino" in lines[0] and "--device cpu" in lines[0]
    assert "int8-ov" in lines[1] and "pip install openvino" in lines[1]
    assert "openvino" not in lines[2].split("]")[0] and "pip install openvino" in lines[2]


def test_devices_command_shows_openvino_and_what_each_component_runs_on(workloads_home, capsys):
    from edge.cli import main

    assert main(["devices", "--json", "--home", str(workloads_home), "--device", "openvino"]) == 0
    info = json.loads(capsys.readouterr().out)
    ov = next(p for p in info["providers"] if p["device"] == "openvino")
    assert ov["provider"] == "OpenVINO runtime" and "precision" in ov["detail"]
    onnx_rows = [r for r in info["models"] if r["component"].endswith(".onnx")]
    assert onnx_rows and all(r["device"] == "openvino" and "cache" not in r for r in onnx_rows)
    assert main(["devices", "--home", str(workloads_home)]) == 0
    text = capsys.readouterr().out
    assert "OpenVINO runtime" in text


# -- the int8-ov export precision -------------------------------------------------------------------

def test_lcm_int8_ov_export_is_verified_and_the_runtime_loads_its_ir(ov_exports):
    from edge.manifest import read

    folder = ov_exports["lcm"]
    m = read(folder, task="image")
    assert m.precisions["int8-ov"]["unet"] == "int8-ov/unet.xml" and (folder / "int8-ov" / "unet.bin").is_file()
    assert m.precisions["int8-ov"]["text_encoder"] == "fp32/text_encoder.onnx"  # the other components are shared
    assert {f["name"] for f in m.files} >= {"int8-ov/unet.xml", "int8-ov/unet.bin"}
    r = json.loads((folder / "report.json").read_text())["precisions"]["int8-ov"]
    assert r["image"]["ok"] and r["image"]["min_psnr"] == 25.0 and r["image"]["psnr"] >= 35.0, r["image"]
    assert r["components"]["unet"]["max_rel_diff"] < 0.5
    # the runtime: auto runs the IR on OpenVINO and the .onnx files on onnxruntime; the image is the verified one
    from edge.ov_session import default_precision

    auto = _image(folder, "auto", "int8-ov")
    assert _psnr(auto, _image(folder, "cpu", "fp32")) >= 30.0
    everything_on_ov = _image(folder, "openvino", "int8-ov")
    if default_precision() == "f32":
        assert np.abs(auto - everything_on_ov).max() <= 2
    else:
        assert _psnr(auto, everything_on_ov) >= BF16_MIN_PSNR


def test_sam_int8_ov_export_is_verified_and_segments_on_openvino(ov_exports, tiny_exports):
    from edge.segment import preprocess as pre
    from edge.segment.engine import SegmentEngine
    from edge.manifest import read
    from export.recipes.sam_onnx import synthetic_image
    from export.verify import iou

    folder = ov_exports["sam"]
    assert (folder / "encoder.xml").is_file() and not (folder / "encoder.onnx").exists()
    rep = json.loads((folder / "report.json").read_text())
    assert rep["passed"] and rep["thresholds"] == {"min_mask_iou": 0.5, "max_embedding_rel_err": 0.5}
    assert rep["summary"]["min_mask_iou"] >= 0.75 and rep["summary"]["max_embedding_rel_err"] <= 0.25
    assert read(folder, task="segment").components == {"encoder": "int8-ov", "decoder": "fp32"}
    int8 = SegmentEngine.from_folder(folder, threads=THREADS)  # auto: the IR on OpenVINO, decoder on onnxruntime
    fp32 = SegmentEngine.from_folder(tiny_exports["sam"], threads=THREADS)
    try:
        assert int8.predictor.encoder.edge_placement["device"] == "openvino"
        rgb = synthetic_image(1)
        h, w = rgb.shape[:2]
        prompt = pre.parse_prompt([(w * 0.5, h * 0.5, 1)], None, (h, w))
        a, _ = int8.predictor.decode(int8.predictor.encode(pre.load_image(rgb)), prompt)
        b, _ = fp32.predictor.decode(fp32.predictor.encode(pre.load_image(rgb)), prompt)
        assert np.mean([iou(x.mask, y.mask) for x, y in zip(a, b)]) >= 0.7
    finally:
        int8.close()
        fp32.close()


def test_int8_ov_weights_cannot_saturate_on_cpus_without_vnni(ov_exports):
    """Every int8 weight of both IRs is 7-bit (NNCF's overflow fix on every layer, not only the first): on an AVX2
    CPU without VNNI, full-range weights saturated the u8 x s8 pair sums (MobileSAM-size encoder: IoU 0.87)."""
    import openvino as ov

    from export.quantize import OV_WEIGHT_LIMIT

    core = ov.Core()
    for ir in (ov_exports["lcm"] / "int8-ov" / "unet.xml", ov_exports["sam"] / "encoder.xml"):
        weights = [op.get_data() for op in core.read_model(str(ir)).get_ops()
                   if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8]
        assert len(weights) >= 2, f"{ir.name}: no int8 weights"
        widest = max(int(np.abs(w.astype(np.int16)).max()) for w in weights)
        assert widest <= OV_WEIGHT_LIMIT, f"{ir.name}: an int8 weight of {widest} (> {OV_WEIGHT_LIMIT}) can saturate"


def test_runtime_on_device_openvino_images_and_masks_as_on_the_cpu(workloads_home):
    """The public door with --device openvino: the scheduler's lanes (image steps in the batch lane, clicks
    interactive) over OpenVINO sessions give the CPU's images (within 2/255 at f32) and masks."""
    from export.recipes.sam_onnx import synthetic_image
    from export.verify import iou
    from support import IMAGE_MODEL, SEG_MODEL, open_runtime

    out = {}
    rgb = synthetic_image(2)
    for device in ("cpu", "openvino"):
        with open_runtime(workloads_home, device=device) as rt:
            img = rt.imagine("a lighthouse at dusk", model=IMAGE_MODEL, size="64x64", steps=2, seed=7)[0]
            seg = rt.segment(rgb, points=[(200, 150, 1)], model=SEG_MODEL)
            out[device] = (np.asarray(img).astype(np.int16), seg.masks[seg.best].mask)
    from edge.ov_session import default_precision

    if default_precision() == "f32":
        assert np.abs(out["cpu"][0] - out["openvino"][0]).max() <= 2
        assert iou(out["cpu"][1], out["openvino"][1]) >= 0.99
    else:
        assert _psnr(out["cpu"][0], out["openvino"][0]) >= BF16_MIN_PSNR
        assert iou(out["cpu"][1], out["openvino"][1]) >= BF16_MIN_IOU



def test_auto_runs_float_graphs_on_openvino_exactly_where_it_computes_bf16(workloads_home, monkeypatch, capsys):
    """`--device auto` (the default) picks the backend per model and component for the CPU it finds: OpenVINO
    for the float graphs where its CPU plugin computes in bf16 (AVX-512 BF16 / AMX), onnxruntime for int8 graphs,
    a click's decoder and every other CPU -- and `edge-run devices` shows the pick and why. Asserted against what
    OpenVINO itself reports for this CPU, so it holds (differently) on either kind of machine."""
    from edge import devices
    from edge.cli import main
    from edge.ov_session import default_precision
    from export.recipes.sam_onnx import synthetic_image
    from support import IMAGE_MODEL, SEG_MODEL, open_runtime

    # 1. the rule, against OpenVINO's own default precision here
    bf16 = default_precision() == "bf16"
    want = "openvino" if bf16 else "auto"
    assert devices.cpu_backend("auto", "fp32").device == want
    assert devices.cpu_backend("auto", "int8-winograd").device == "auto"
    assert devices.cpu_backend("auto", "fp32", click=True).device == "auto"
    assert devices.cpu_backend("cpu", "fp32").device == "cpu"
    if not bf16:
        assert "no AVX-512 BF16 / AMX" in devices.cpu_backend("auto", "fp32").why
    monkeypatch.setenv("EDGE_OV_PRECISION", "f32")  # OpenVINO told to compute in f32: onnxruntime's kernels win
    assert devices.cpu_backend("auto", "fp32").device == "auto"
    monkeypatch.delenv("EDGE_OV_PRECISION")

    # 2. an image model exported in several precisions loads the one fastest here when none is asked
    from dataclasses import replace

    from edge.image.options import image_options
    from edge.manifest import read

    tiny = read(workloads_home / "models" / IMAGE_MODEL, task="image")
    files = tiny.precisions["fp32"]
    several = replace(tiny, precision="int8", precisions={"int8": files, "fp32": files, "int8-ov": files})
    assert image_options(several).precision == ("int8-ov" if bf16 else "int8")
    assert image_options(several, device="cpu").precision == "int8"
    assert image_options(several, precision="fp32").precision == "fp32"

    # 3. `edge-run devices` shows it per component, with why
    assert main(["devices", "--json", "--home", str(workloads_home)]) == 0
    rows = {(r["model"], r["component"]): r for r in json.loads(capsys.readouterr().out)["models"]}
    shown = "openvino" if bf16 else "cpu"
    unet = next(r for (m, c), r in rows.items() if m == IMAGE_MODEL and c.endswith("fp32/unet.onnx"))
    encoder = rows[(SEG_MODEL, "encoder.onnx")]
    decoder = rows[(SEG_MODEL, "decoder.onnx")]
    assert unet["device"] == shown and ("bf16" in unet["why"]) == bf16 and "AVX-512 BF16" in unet["why"]
    sam_fp32 = "int8" not in encoder["why"]
    assert encoder["device"] == (shown if sam_fp32 else "cpu")
    assert decoder["device"] == "cpu" and "click" in decoder["why"]

    # 4. the engines open what it showed
    from edge.ov_session import OpenVinoSession

    with open_runtime(workloads_home) as rt:
        rt.imagine("a lighthouse", model=IMAGE_MODEL, size=64, steps=1, seed=1)
        rt.segment(synthetic_image(2), points=[(200, 150, 1)], model=SEG_MODEL)
        engines = {m.id: m.engine for m in rt.scheduler._models.values()}
        unet = engines[IMAGE_MODEL].components.unet.session
        predictor = engines[SEG_MODEL].predictor
        assert isinstance(unet, OpenVinoSession if bf16 else ort.InferenceSession)
        assert isinstance(predictor.encoder, OpenVinoSession) == (encoder["device"] == "openvino")
        assert isinstance(predictor.decoder, ort.InferenceSession)
