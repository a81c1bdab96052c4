#!/usr/bin/env bash
# scripts/setup.sh — the one set-up command on a fresh Debian 12 machine.
#
#   scripts/setup.sh main    install + build, then run the main job (2 ranks, bundled real data)
#   scripts/setup.sh test    install + build, then run every test (ctest; multi-rank ones under mpirun)
#   scripts/setup.sh build   install + build only
#   scripts/setup.sh bench   install + build, then regenerate the benchmarks (bench/run-all; extra arguments,
#                            e.g. --quick, are passed on)
#
# Idempotent and non-interactive: packages already present are not reinstalled, the build is incremental
# (ccache keeps a from-scratch rebuild fast). Needs root or sudo for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-build}
shift || true

# ---- packages -----------------------------------------------------------------------------------
# libopenblas0-openmp: Debian's libtorch otherwise falls back to the reference BLAS (~10x slower
# matmul); the OpenMP flavour, unlike the pthread one, obeys torch's per-rank thread count.
packages=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev libopenblas0-openmp
  libopenmpi-dev openmpi-bin
  libhdf5-dev hdf5-tools
  libboost-program-options-dev
  libgtest-dev
  libsentencepiece-dev nlohmann-json3-dev libfmt-dev
  python3-torch python3-numpy
  python3-matplotlib
)
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

# ---- build --------------------------------------------------------------------------------------
# ccache keyed on paths relative to the checkout, so a second clone (CI's) reuses the first's objects.
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
jobs=$(nproc)
if [ ! -f build/build.ninja ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
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
    exec bench/run-all "$@" ;;
  *)
    echo "usage: scripts/setup.sh [main|test|build|bench [--quick]]" >&2
    exit 2 ;;
esac
