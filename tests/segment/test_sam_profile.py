"""The profile's SAM precision: with an fp32 and an int8 MobileSAM installed, a segmentation request that
names no model gets the one in EDGE_SAM_PRECISION (pi4-4gb: int8); without a preference, the catalog's
default; an explicit model always wins."""

from __future__ import annotations

from edge.api import Runtime
from edge.config import Settings
from support import THREADS, install_local


def test_an_unnamed_segment_model_is_the_installed_one_in_the_profiles_precision(sam_fp32_dir, sam_int8_dir,
                                                                                  tmp_path):
    home = tmp_path / "home"
    for folder, model_id in ((sam_fp32_dir, "sam-tiny-fp32"), (sam_int8_dir, "sam-tiny-int8")):
        install_local(home, folder, model_id, "segment", {"recipe": "sam", "random_init": "tiny", "seed": 0})

    def runtime(**env: str) -> Runtime:
        return Runtime(settings=Settings.from_env(env=env, home=home, threads=THREADS, offline=True))

    with runtime(EDGE_PROFILE="pi4-4gb") as rt:
        assert rt.settings.sam_precision == "int8"
        assert rt.resolve_model(None, task="segment") == "sam-tiny-int8"
        assert rt.resolve_model("sam-tiny-fp32", task="segment") == "sam-tiny-fp32"
    with runtime(EDGE_PROFILE="laptop") as rt:
        assert rt.resolve_model(None, task="segment") == rt.catalog.default_for("segment").id
    with runtime(EDGE_PROFILE="pi4-4gb", EDGE_SAM_PRECISION="fp32") as rt:
        assert rt.resolve_model(None, task="segment") == "sam-tiny-fp32"
