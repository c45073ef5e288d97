#!/usr/bin/env bash
# edge-run on arm64 under emulation (issue 20.4): the Python API in a Debian arm64 root run through
# qemu-user-static, against the same workloads on this x86 machine, same seeds.
#
#   sudo bash bench/arm64.sh            # as root: debootstrap, binfmt_misc and chroot need it
#
# Stages (each cached under $EDGE_ARM64_CACHE, default ~/.cache/edge-run-bench/arm64, so a second run only
# reinstalls edge-run and reruns the workloads):
#   1. host tools: Debian's debootstrap, qemu-user-static, binfmt-support and the aarch64 cross compilers;
#      the qemu-aarch64 binfmt handler enabled.
#   2. a Debian bookworm arm64 root (debootstrap --arch=arm64; its second stage runs under qemu).
#   3. llama-cpp-python for aarch64: the same release as on this machine, its vendored llama.cpp
#      CROSS-COMPILED here with Debian's aarch64-linux-gnu gcc (a native build under emulation takes hours
#      on 2 cores), generic armv8-a (-DGGML_NATIVE=OFF, so it runs on a Pi 4's Cortex-A72), OpenMP on as a
#      pip build on the Pi would be; installed into the root's venv as the package pip would lay out.
#   4. the root's venv: the aarch64 wheels of numpy, pillow, onnxruntime, tokenizers ... from PyPI, then
#      edge-run itself from this checkout (git archive HEAD: committed code only).
#   5. the x86 reference: bench/arm64_check.py prepare (the tiny LCM and tiny MobileSAM exports the suite
#      builds, the default chat model from PyPI, transformers' fp32 logits of the chat probe) and run.
#   6. the same run inside the arm64 root (every process an aarch64 binary under qemu-aarch64-static).
#   7. the comparison at the suite's fp32 tolerances (images, masks; chat by its logits against transformers,
#      see bench/arm64_check.py), written to $CACHE/result.json. Emulated times are no speed claim.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${EDGE_ARM64_CACHE:-$HOME/.cache/edge-run-bench/arm64}
ROOTFS=$CACHE/rootfs
WORK=$CACHE/work
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PY=${PYTHON:-python3}
LLAMA_VERSION=$("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)')
LLAMA_DIR=$CACHE/llama-cpp-python-$LLAMA_VERSION-aarch64
VENV=/opt/edge-venv
mkdir -p "$CACHE" "$WORK"
say() { printf '# %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "bench/arm64.sh: run as root (debootstrap, binfmt_misc and chroot need it)" >&2; exit 2; }

# 1. host tools ---------------------------------------------------------------------------------------
missing=()
for pair in debootstrap:debootstrap qemu-aarch64-static:qemu-user-static update-binfmts:binfmt-support \
            aarch64-linux-gnu-g++:g++-aarch64-linux-gnu cmake:cmake; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64

# 2. the arm64 root -----------------------------------------------------------------------------------
if [ ! -f "$ROOTFS/.edge-rootfs-done" ]; then
    say "debootstrap --arch=arm64 bookworm (once; its second stage runs under emulation, ~15 min)"
    rm -rf "$ROOTFS.partial"
    debootstrap --arch=arm64 --variant=minbase \
        --include=python3,python3-venv,python3-pip,python3-dev,ca-certificates,libgomp1 \
        bookworm "$ROOTFS.partial" "$MIRROR" >"$CACHE/debootstrap.log"
    rm -rf "$ROOTFS" && mv "$ROOTFS.partial" "$ROOTFS" && touch "$ROOTFS/.edge-rootfs-done"
fi

mounted=()
cleanup() { for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" || true; done; }
trap cleanup EXIT
bind() {  # bind-mount $1 at the same path inside the root
    mkdir -p "$ROOTFS$1"
    mount --bind "$1" "$ROOTFS$1" && mounted+=("$ROOTFS$1")
}
mount -t proc proc "$ROOTFS/proc" && mounted+=("$ROOTFS/proc")
bind /dev
# (not /sys: this x86 host's /sys/devices/system/cpu crashes onnxruntime's cpuinfo under qemu with SIGSEGV; without
# it onnxruntime warns "cpuinfo_initialize failed" and runs its generic aarch64 kernels)
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"  # this network's CAs
quiet_cpuinfo() { grep -v -e 'cpuinfo' -e 'Unknown CPU vendor' >&2 || true; }  # the missing /sys, see above
in_root() { chroot "$ROOTFS" /usr/bin/env -i PATH=$VENV/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 "$@"; }
[ "$(in_root uname -m)" = aarch64 ] || { echo "bench/arm64.sh: the root does not run as aarch64" >&2; exit 1; }

# 3. llama-cpp-python, cross-compiled -----------------------------------------------------------------
if [ ! -f "$LLAMA_DIR/.done" ]; then
    say "cross-compiling llama.cpp of llama-cpp-python $LLAMA_VERSION for aarch64 (once; 14 CPU-minutes)"
    src=$CACHE/src && rm -rf "$src" && mkdir -p "$src"
    "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_VERSION" -d "$src"
    tar xzf "$src"/llama_cpp_python-*.tar.gz -C "$src"
    sdist=$(echo "$src"/llama_cpp_python-*/)
    cmake -S "$sdist" -B "$src/build" -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
        -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
        -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
        -DSKBUILD_PLATLIB_DIR="$src/platlib" >"$src/cmake.log"
    cmake --build "$src/build" -j"$(nproc)" >>"$src/cmake.log"
    cmake --install "$src/build" >>"$src/cmake.log"
    rm -rf "$LLAMA_DIR" && mkdir -p "$LLAMA_DIR"
    cp -r "$sdist/llama_cpp" "$LLAMA_DIR/llama_cpp"
    rm -rf "$LLAMA_DIR/llama_cpp/lib" && cp -r "$src/platlib/llama_cpp/lib" "$LLAMA_DIR/llama_cpp/lib"
    file "$LLAMA_DIR/llama_cpp/lib/libllama.so" | grep -q aarch64
    touch "$LLAMA_DIR/.done"
    rm -rf "$src"
fi

# 4. the root's venv and edge-run -------------------------------------------------------------------
deps=$("$PY" - "$REPO/pyproject.toml" <<'EOF'
import sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
# llama-cpp-python is laid out from stage 3; its own requirements are listed instead
print(" ".join(d for d in deps if not d.startswith("llama-cpp-python"))
      + " typing-extensions>=4.5 diskcache>=5.6.1 jinja2>=2.11.3")
EOF
)
stamp=$(echo "$deps $LLAMA_VERSION" | sha256sum | cut -c1-16)
if [ ! -f "$ROOTFS$VENV/.edge-deps-$stamp" ]; then
    say "the root's venv: aarch64 wheels from PyPI (once)"
    rm -rf "$ROOTFS$VENV"
    in_root /usr/bin/python3 -m venv "$VENV"
    # shellcheck disable=SC2086
    in_root pip install -q --only-binary :all: $deps
    site=$(in_root python -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
    cp -r "$LLAMA_DIR/llama_cpp" "$ROOTFS$site/llama_cpp"
    meta="$ROOTFS$site/llama_cpp_python-$LLAMA_VERSION.dist-info" && mkdir -p "$meta"
    printf 'Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: %s\n' "$LLAMA_VERSION" >"$meta/METADATA"
    echo "edge-run bench/arm64.sh (cross-compiled)" >"$meta/INSTALLER" && : >"$meta/RECORD"
    touch "$ROOTFS$VENV/.edge-deps-$stamp"
fi
rm -rf "$ROOTFS/src/edge-run" && mkdir -p "$ROOTFS/src/edge-run"
git -C "$REPO" archive HEAD | tar -x -C "$ROOTFS/src/edge-run"
in_root pip install -q --no-deps --no-build-isolation /src/edge-run 2>/dev/null \
    || in_root pip install -q --no-deps /src/edge-run
in_root python -c 'import edge, llama_cpp, onnxruntime; print("# aarch64 root: edge-run", edge.__version__,
    "llama-cpp-python", llama_cpp.__version__, "onnxruntime", onnxruntime.__version__)' 2> >(quiet_cpuinfo)

# 5. the x86 reference ------------------------------------------------------------------------------
say "x86_64 reference run"
"$PY" "$REPO/bench/arm64_check.py" prepare "$WORK" 2>/dev/null  # (transformers' and llama.cpp's load chatter)
"$PY" "$REPO/bench/arm64_check.py" run "$WORK" "$WORK/x86_64.npz" >"$WORK/x86_64.log"

# 6. the aarch64 run --------------------------------------------------------------------------------
say "aarch64 run under qemu-aarch64-static (minutes; emulated times are no speed claim)"
bind "$WORK"
in_root python /src/edge-run/bench/arm64_check.py run "$WORK" "$WORK/aarch64.npz" >"$WORK/aarch64.log" \
    2> >(quiet_cpuinfo)

# 7. the comparison -----------------------------------------------------------------------------------
"$PY" "$REPO/bench/arm64_check.py" compare "$WORK/x86_64.npz" "$WORK/aarch64.npz" --json "$CACHE/result.json"
say "result: $CACHE/result.json ($(date -u +%F), edge-run $(git -C "$REPO" rev-parse --short HEAD))"
