"""llama.cpp's own `llama-server`, the peer for concurrent chats in bench/chat.py, built from the llama.cpp
that the installed llama-cpp-python vendors (same release, same kernels as edge-run's chat engine).

    python bench/llama_server.py      # build once (~10-15 min on 2 cores), print the binary and its --version

The sdist, the build tree and the binary live in ~/.cache/edge-run-bench/llama-server/, never in the repo.
Build: cmake Release, native CPU, OpenMP (as llama-cpp-python's wheel), static (one self-contained binary),
no web UI (its prebuilt assets would be downloaded), no OpenSSL.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

CACHE = Path.home() / ".cache" / "edge-run-bench" / "llama-server"
CMAKE_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DGGML_OPENMP=ON", "-DBUILD_SHARED_LIBS=OFF",
               "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
               "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF"]


def _tools() -> None:
    """Install Debian's cmake and g++ if missing (as bench/arm64.sh does for its tools)."""
    missing = [pkg for pkg, exe in (("cmake", "cmake"), ("g++", "g++")) if not shutil.which(exe)]
    if missing:
        subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, stdout=subprocess.DEVNULL,
                       env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def build(cache: Path = CACHE) -> Path:
    """Path to a llama-server built from the installed llama-cpp-python's vendored llama.cpp (built once)."""
    import llama_cpp

    version = llama_cpp.__version__
    binary = cache / f"llama-server-{version}"
    if binary.exists():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    # 1. the sdist of the installed release (PyPI, or its mirror)
    sdist = cache / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}", "--no-binary",
                        ":all:", "--no-deps", "-d", str(cache)], check=True)
    # 2. its vendor/llama.cpp
    src = cache / f"llama.cpp-{version}"
    if not (src / "CMakeLists.txt").exists():
        prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            for m in members:
                m.name = m.name[len(prefix):]
            tar.extractall(src, members=members, filter="data")
    # 3. configure and build the one target
    _tools()
    tree = cache / f"build-{version}"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(["cmake", "-S", str(src), "-B", str(tree), *gen, *CMAKE_FLAGS], check=True)
    subprocess.run(["cmake", "--build", str(tree), "--target", "llama-server", "-j2"], check=True)
    shutil.copy2(tree / "bin" / "llama-server", binary)
    print(f"llama-server {version} built: {binary}", file=sys.stderr)
    return binary


if __name__ == "__main__":
    path = build()
    print(path)
    subprocess.run([str(path), "--version"])
