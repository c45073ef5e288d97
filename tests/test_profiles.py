"""Device profiles (edge/profiles.py) and how Settings applies them: each named profile's values, what
``auto`` picks for a described machine, explicit settings over the profile, bad names refused."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from edge import cpu
from edge.config import Settings, add_settings_flags
from edge.errors import BadRequest
from edge.profiles import GiB, PROFILES, DeviceFacts, pick

PI4 = DeviceFacts(ram_bytes=4 * GiB - (200 << 20), cores=4, flags=frozenset({"neon", "asimd"}), machine="aarch64",
                  board="Raspberry Pi 4 Model B Rev 1.4")
LAPTOP = DeviceFacts(ram_bytes=16 * GiB, cores=8, flags=frozenset({"avx", "avx2", "fma"}), machine="x86_64")


@pytest.mark.parametrize("name, want", [
    ("pi4-4gb", dict(ram_budget=int(2.5 * GiB), threads=4, ctx=2048, chat_slots=1, image_precision="int8-winograd",
                     image_decoder="taesd", sam_precision="int8", keep_alive=120.0)),
    ("pi5-8gb", dict(ram_budget=int(5.5 * GiB), threads=4, ctx=4096, chat_slots=2, image_precision="int8-winograd",
                     image_decoder="taesd", sam_precision="int8", keep_alive=300.0)),
    ("phone-8gb", dict(ram_budget=4 * GiB, threads=4, ctx=4096, chat_slots=1, image_precision="int8-winograd",
                       image_decoder="taesd", sam_precision="int8", keep_alive=60.0)),
    ("laptop", dict(ram_budget=12 * GiB, threads=8, ctx=4096, chat_slots=2, image_precision=None, image_decoder=None,
                    sam_precision=None, keep_alive=300.0)),
])
def test_each_named_profile_gives_its_values(name, want):
    s = Settings.from_env(env={"EDGE_PROFILE": name}, facts=LAPTOP)
    assert {k: getattr(s, k) for k in want} == want
    assert s.profile_choice.name == name and s.sources["profile"] == "env"
    for k in want:  # the laptop profile leaves threads and the precisions to the built-in defaults
        assert s.sources[k] == ("profile" if k in PROFILES[name].values(LAPTOP) else "default"), k


def test_a_profile_never_promises_more_ram_or_cores_than_the_device_has():
    small = DeviceFacts(ram_bytes=2 * GiB, cores=2, machine="aarch64")  # a pi4-4gb profile in a 2 GB container
    s = Settings.from_env(env={"EDGE_PROFILE": "pi4-4gb"}, facts=small)
    assert s.ram_budget == int(0.65 * 2 * GiB) and s.threads == 2
    assert "65% of 2.0 GiB" in s.reasons["ram_budget"]


def test_auto_picks_pi4_for_a_4gb_4core_machine_without_avx_and_laptop_for_16gb_8cores():
    assert pick(PI4).name == "pi4-4gb"
    assert pick(DeviceFacts(ram_bytes=4 * GiB, cores=4, flags=frozenset(), machine="x86_64")).name == "pi4-4gb"
    assert pick(LAPTOP).name == "laptop"
    assert pick(DeviceFacts(ram_bytes=8 * GiB, cores=4, flags=frozenset({"asimd", "asimddp"}),
                            machine="aarch64")).name == "pi5-8gb"
    assert pick(DeviceFacts(ram_bytes=8 * GiB, cores=8, machine="aarch64", android=True)).name == "phone-8gb"
    choice = pick(PI4)
    assert choice.picked_by == "auto" and "3.8 GiB" in choice.reason
    s = Settings.from_env(env={}, facts=PI4)  # auto is the default
    assert s.profile == "auto" and s.profile_choice.name == "pi4-4gb" and s.image_decoder == "taesd"


def test_an_explicit_setting_overrides_the_profile_flag_over_env_over_profile():
    p = argparse.ArgumentParser()
    add_settings_flags(p)
    args = p.parse_args(["--profile", "pi4-4gb", "--threads", "1", "--image-decoder", "auto"])
    s = Settings.from_args(args, env={"EDGE_CTX": "8192", "EDGE_THREADS": "3"})
    assert s.profile == "pi4-4gb" and s.threads == 1 and s.sources["threads"] == "flag"
    assert s.ctx == 8192 and s.sources["ctx"] == "env"
    assert s.image_decoder is None and s.sources["image_decoder"] == "flag"  # auto: the model's default
    assert s.image_precision == "int8-winograd" and s.sources["image_precision"] == "profile"
    s = Settings.from_env(env={"EDGE_PROFILE": "pi4-4gb"}, ram_budget=1 << 30)
    assert s.ram_budget == 1 << 30 and s.sources["ram_budget"] == "argument"


def test_bad_profile_names_are_refused_naming_the_variable_and_the_choices():
    with pytest.raises(BadRequest, match=r"EDGE_PROFILE='pi3'.*auto\|pi4-4gb\|pi5-8gb\|phone-8gb\|laptop") as e:
        Settings.from_env(env={"EDGE_PROFILE": "pi3"}, facts=LAPTOP)
    assert e.value.param == "EDGE_PROFILE"
    p = argparse.ArgumentParser()
    add_settings_flags(p)
    with pytest.raises(BadRequest, match=r"--profile 'rpi'.*for example --profile pi4-4gb"):
        Settings.from_args(p.parse_args(["--profile", "rpi"]), env={})
    with pytest.raises(BadRequest, match=r"`profile` must be one of auto, pi4-4gb.*got 'pi-4'") as e:
        Settings.from_env(env={}, facts=LAPTOP, profile="pi-4")  # what Runtime(profile=...) passes
    assert e.value.param == "profile"
    with pytest.raises(BadRequest, match=r"EDGE_IMAGE_DECODER='vea'.*vae\|taesd"):
        Settings.from_env(env={"EDGE_IMAGE_DECODER": "vea"}, facts=LAPTOP)


def test_cpu_flags_read_x86_and_arm_cpuinfo():
    x86 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma f16c avx512f avx512_vnni\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid asimddp\nCPU implementer\t: 0x41\n"
    assert cpu.cpu_flags(x86) == {"avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni"}
    assert cpu.cpu_flags(arm) == {"asimd", "asimddp"}
    assert cpu.cpu_flags("") == frozenset()


CGROUP_V1 = "/sys/fs/cgroup/memory"


@pytest.mark.skipif(not os.access(CGROUP_V1, os.W_OK), reason="needs a writable cgroup v1 memory hierarchy")
def test_a_process_in_a_capped_cgroup_sees_its_cap_and_auto_picks_by_it(tmp_path):
    """The cap of the group /proc/self/cgroup names (not the hierarchy's root) is the device's RAM: a 3 GiB
    group makes `auto` pick pi4-4gb with 65 % of 3 GiB, on this 24 GB machine."""
    group = f"{CGROUP_V1}/edge-test-{os.getpid()}"
    os.mkdir(group)
    try:
        with open(f"{group}/memory.limit_in_bytes", "w") as f:
            f.write(str(3 * GiB))
        code = ("from edge import profiles\nf = profiles.detect()\nc = profiles.pick(f)\n"
                "print(f.ram_bytes, f.ram_source, c.name, c.profile.values(f)['ram_budget'][0])")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             preexec_fn=lambda: open(f"{group}/cgroup.procs", "w").write(str(os.getpid()))).stdout
        ram, _, rest = out.partition(" ")
        assert int(ram) == 3 * GiB and "cgroup memory limit pi4-4gb" in rest
        assert int(rest.split()[-1]) == int(0.65 * 3 * GiB)
    finally:
        os.rmdir(group)
