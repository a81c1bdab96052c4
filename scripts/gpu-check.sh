#!/usr/bin/env bash
# scripts/gpu-check.sh [OUT_DIR] — on a GPU machine: build deltatune and run every GPU check in one call, in under
# 8 minutes on one H200 with 16 cores; results (JSON) and logs in OUT_DIR ($OUT if set, else gpu-results).
#
# Needs there: the NVIDIA driver, CUDA (nvcc), python3 with a CUDA torch (its libtorch is what we build against;
# transformers and peft for the eager side of the benchmark), g++, cmake (ninja if present), and .gpu/debs from
# scripts/fetch-gpu-debs.sh: Open MPI, HDF5, Boost, GoogleTest, fmt, nlohmann-json, sentencepiece and pkgconf as
# Debian 12 packages, unpacked into /opt/deltatune-deps (never into /). No network, no package registry.
#
# Steps, each under its own time limit; one that fails is recorded in OUT_DIR/status.json and the next runs.
# Expected seconds on the H200 machine (limit): facts 8 (60), deps 6 (60), configure 8 (90), build 85 (300),
# ctest_gpu 120 (200), main_cuda 25 (120), main_cuda_np2 35 (120), commbench 15 (60), bench 200 (240),
# threads 2 x 15 (45 each), ctest with what is left (180).
#   facts          nvidia-smi.txt; torch.json (torch.cuda's view of the GPU, a bf16 matmul figure)
#   deps configure build    unpack, cmake (-DDELTATUNE_PYTHON=python3), build everything with -j$(nproc)
#   ctest_gpu      ctest -L gpu --output-on-failure                                 -> ctest_gpu.{log,xml,json}
#   main_cuda      train --config configs/main.ini --device cuda (1 rank)           -> main_cuda.jsonl
#   main_cuda_np2  mpirun -np 2 ... --device cuda --dist.backend mpi (NCCL refuses two ranks on one GPU)
#   main_cuda_nccl 40 steps of it over NCCL (1 rank)                              -> main_cuda_nccl.jsonl
#   exposed_comm   bench/gpu/check_exposed.py: its exposed_comm_s measured on the stream (> 0)
#   commbench      commbench --dist.backend nccl -b 8 -e 256M -f 4 (1 rank)         -> commbench_nccl.json
#   bench          bench/gpu/run.py: deltatune vs PyTorch eager                      -> gpu.json, gpu.md
#   threads_<n>    the CPU main job, 2 ranks, --threads 0 (default) and 8, 150 steps -> threads.json
#   ctest          every other test (-LE gpu), -j8, with the time left              -> ctest.{log,xml,json}
# then summary.txt (also printed). A budget of GPU_CHECK_BUDGET_S seconds (default 460) from the start caps every
# step's limit; a step that would start with under 15 s left is skipped, and says so.
#
# Environment: BUILD_DIR (default build-gpu; the binary is BUILD_DIR/deltatune), DEBS (default .gpu/debs),
# GPU_CHECK_BUDGET_S, GPU_CHECK_STEPS (a subset, e.g. "bench threads"; the build steps always run, and are
# incremental on a machine that has built once), JOBS (default nproc), BENCH_CAP_S (the benchmark's limit, default
# 240: stories260K and T5-base take ~110 s of it, T5-3B ~135 s), and for a short rerun BUILD_TARGETS
# (e.g. "deltatune test_device"), CTEST_GPU_ARGS (e.g. "-R test_device"), CTEST_ARGS (the same for the CPU tests), BENCH_ARGS (e.g. "--models t5-3b").
# Under the device tool (OUT set, no OUT_DIR argument), which returns at most 8 files, the results are packed at
# the end into OUT/gpu-check.tar.gz, with status.json, summary.txt, gpu.json, gpu.md, threads.json and
# commbench_nccl.json kept beside it.
set -u
cd "$(dirname "$0")/.." || exit 2
start=$(date +%s)
out=${1:-${OUT:-gpu-results}}
pack=0
[ $# -eq 0 ] && [ -n "${OUT:-}" ] && pack=1
mkdir -p "$out" && out=$(cd "$out" && pwd)
build=${BUILD_DIR:-build-gpu} debs=${DEBS:-.gpu/debs} jobs=${JOBS:-$(nproc)}
deadline=$(( start + ${GPU_CHECK_BUDGET_S:-460} ))
py=$(command -v python3)
bin=$build/deltatune
# The eager side of the benchmark runs without the unpacked Debian libraries in its LD_LIBRARY_PATH.
export DT_BASE_LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-} PYTHONUNBUFFERED=1 DELTATUNE=$bin
: > "$out/status.tsv"

# ---- one step: its log, its limit, its status ---------------------------------------------------------------
left() { local l=$(( deadline - $(date +%s) )); echo $(( $1 < l ? $1 : l )); }  # seconds a step may take
# wanted NAME: whether GPU_CHECK_STEPS (if set) asks for the step (threads_4 is "threads"; the build always runs).
wanted() { [ -z "${GPU_CHECK_STEPS:-}" ] || [[ " deps configure build $GPU_CHECK_STEPS " == *" ${1%%_[0-9]*} "* ]]; }
record() {  # NAME STATUS RC SECONDS LIMIT NOTE
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$out/status.tsv"
  "$py" bench/gpu/report.py status "$out"
  printf '[gpu-check] %-14s %-8s %5ss  %s\n' "$1" "$2" "$4" "$6"
}
# step NAME CAP_S CMD...: runs CMD under min(CAP_S, the budget left), output in OUT/NAME.log.
step() {
  local name=$1 cap=$2 t t0 rc st
  shift 2
  wanted "$name" || return 0
  t=$(left "$cap")
  if [ "$t" -lt 15 ]; then record "$name" skipped -1 0 "$cap" "the time budget was spent"; return 1; fi
  t0=$(date +%s)
  timeout -k 10 "$t" "$@" > "$out/$name.log" 2>&1
  rc=$?
  case $rc in 0) st=ok ;; 124|137) st=timeout ;; *) st=failed ;; esac
  record "$name" "$st" "$rc" $(( $(date +%s) - t0 )) "$t" "$(grep -v '^\s*$' "$out/$name.log" | tail -n 1 | cut -c1-200 | tr '\t' ' ')"
  return $rc
}
# needs_bin NAME: false (and recorded) when there is no binary to run.
needs_bin() { [ -x "$bin" ] && return 0; wanted "$1" && record "$1" skipped -1 0 0 "no binary: the build failed"; return 1; }

# ---- facts: the GPU as the driver and as torch see it (before our libraries enter LD_LIBRARY_PATH) ---------
step facts 60 bash -c "nvidia-smi > '$out/nvidia-smi.txt' 2>&1; nvidia-smi -q >> '$out/nvidia-smi.txt' 2>&1;
  '$py' bench/gpu/report.py facts '$out'"

# ---- deps: Open MPI, HDF5, ... from .gpu/debs, into a prefix; fallback libraries only where the machine lacks them
P=/opt/deltatune-deps F=/opt/deltatune-deps-fallback
unpack() {
  local stamp
  [ -d "$debs/fallback" ] || { echo "no $debs: run scripts/fetch-gpu-debs.sh on a Debian 12 machine and bring .gpu"; return 1; }
  stamp=$(ls "$debs"/*.deb "$debs"/fallback/*.deb | md5sum | cut -c1-32)
  [ -f "$P/.unpacked-$stamp" ] && { echo "already unpacked"; return 0; }
  mkdir -p $P $F
  for f in "$debs"/*.deb; do dpkg -x "$f" $P || return 1; done
  for f in "$debs"/fallback/*.deb; do dpkg -x "$f" $F || return 1; done
  for so in $F/usr/lib/x86_64-linux-gnu/*.so.* $F/lib/x86_64-linux-gnu/*.so.*; do
    [ -f "$so" ] || continue  # ldconfig -p lists "<tab>NAME (libc6,x86-64) => PATH"
    ldconfig -p | awk -v n="$(basename "$so")" '$1 == n {found = 1} END {exit !found}' && rm -f "$so"
  done
  # libssl-dev (SHA-256): its configuration headers sit in the multiarch folder, which the compiler searches
  # only under /usr/include, and its libcrypto.so names libcrypto.so.3, which is the machine's own unless fallback/
  # had to provide it.
  cp -n $P/usr/include/x86_64-linux-gnu/openssl/*.h $P/usr/include/openssl/
  local crypto
  crypto=$(ldconfig -p | awk '$1 == "libcrypto.so.3" {print $NF; exit}')
  ln -sf "${crypto:-$F/usr/lib/x86_64-linux-gnu/libcrypto.so.3}" $P/usr/lib/x86_64-linux-gnu/libcrypto.so
  # dpkg -x runs no maintainer scripts, so the alternatives' plain names are missing.
  ln -sf mpirun.openmpi $P/usr/bin/mpirun && ln -sf mpiexec.openmpi $P/usr/bin/mpiexec
  touch "$P/.unpacked-$stamp"
  echo "unpacked $(ls "$debs"/*.deb | wc -l) + $(ls "$debs"/fallback/*.deb | wc -l) packages into $P, $F"
}
step deps 60 bash -c "$(declare -f unpack); P=$P F=$F debs='$debs' unpack"

# ---- configure, build -----------------------------------------------------------------------------------------
mkdir -p "$build"
nccl_py=$("$py" -c 'import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])' 2>/dev/null || true)
if [ -n "$nccl_py" ]; then  # the nvidia-nccl wheel ships libnccl.so.2 and no libnccl.so for the linker
  mkdir -p "$build/nccl/lib"
  ln -sf "$nccl_py/lib/libnccl.so.2" "$build/nccl/lib/libnccl.so"
  ln -sf "$nccl_py/lib/libnccl.so.2" "$build/nccl/lib/libnccl.so.2"
  ln -sfn "$nccl_py/include" "$build/nccl/include"
fi
# env.sh: what running the binary, mpirun or ctest needs (source it by hand for more).
cat > "$build/env.sh" <<ENV
export OPAL_PREFIX=$P/usr PATH=$P/usr/bin:\$PATH
export LD_LIBRARY_PATH=$P/usr/lib/x86_64-linux-gnu:$P/usr/lib/x86_64-linux-gnu/hdf5/serial:$F/usr/lib/x86_64-linux-gnu:$F/lib/x86_64-linux-gnu${nccl_py:+:$nccl_py/lib}:\${LD_LIBRARY_PATH:-}
export PKG_CONFIG_SYSROOT_DIR=$P PKG_CONFIG_LIBDIR=$P/usr/lib/x86_64-linux-gnu/pkgconfig:$P/usr/share/pkgconfig
export NCCL_HOME=$(cd "$build" && pwd)/nccl OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 PMIX_MCA_pcompress_base_silence_warning=1
ENV
. "$build/env.sh"
gen=(-G Ninja)
command -v ninja > /dev/null || gen=(-G "Unix Makefiles")
[ -f "$build/CMakeCache.txt" ] && gen=()  # keep the generator the build folder was made with
nvcc=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
torch_cmake=$("$py" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)' 2>/dev/null)
configured=1
step configure 90 cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DDELTATUNE_PYTHON="$py" \
  -DCMAKE_PREFIX_PATH="$torch_cmake;$P/usr" \
  -DMPI_CXX_COMPILER=$P/usr/bin/mpicxx.openmpi -DMPI_C_COMPILER=$P/usr/bin/mpicc.openmpi \
  -DHDF5_C_COMPILER_EXECUTABLE=/bin/false -DHDF5_C_INCLUDE_DIR=$P/usr/include/hdf5/serial \
  -DHDF5_C_LIBRARY_hdf5=$P/usr/lib/x86_64-linux-gnu/hdf5/serial/libhdf5.so \
  -DPKG_CONFIG_EXECUTABLE=$P/usr/bin/pkgconf ${nvcc:+-DCMAKE_CUDA_COMPILER=$nvcc} \
  && configured=0 && grep "deltatune:" "$out/configure.log"
# The binary exists afterwards only if this build linked it (an older one is not this tree's); -k: a test that
# does not compile must not stop the binary or the other tests.
rm -f "$bin"
if [ $configured -eq 0 ]; then
  kgo=(-- -k 0)
  grep -q "CMAKE_GENERATOR:INTERNAL=Ninja" "$build/CMakeCache.txt" || kgo=(-- -k)
  targets=()
  for t in ${BUILD_TARGETS:-}; do targets+=(--target "$t"); done
  step build 300 cmake --build "$build" -j "$jobs" "${targets[@]}" "${kgo[@]}" || grep -E "error:|FAILED" "$out/build.log" | head -n 20
else
  record build skipped -1 0 0 "configure failed"
fi

# ---- the GPU-labelled tests ------------------------------------------------------------------------------------
# shellcheck disable=SC2086  # CTEST_GPU_ARGS: extra words, e.g. "-R test_device"
[ -f "$build/CTestTestfile.cmake" ] && step ctest_gpu 200 ctest --test-dir "$build" -L gpu ${CTEST_GPU_ARGS:-} --no-tests=error \
  --output-on-failure --timeout 190 --output-junit "$out/ctest_gpu.xml"

# ---- the main job on the GPU: 1 rank, then 2 ranks over MPI ---------------------------------------------------
rm -f "$out"/main_cuda*.jsonl "$out"/threads_*.jsonl
needs_bin main_cuda && step main_cuda 120 "$bin" train --config configs/main.ini --device cuda \
  --metrics "$out/main_cuda.jsonl"
needs_bin main_cuda_np2 && step main_cuda_np2 120 mpirun -np 2 "$bin" train --config configs/main.ini --device cuda \
  --dist.backend mpi --metrics "$out/main_cuda_np2.jsonl"

# ---- the main job over NCCL (1 rank): exposed_comm_s is the compute stream's time in GradSync::finish ----------
# (two timing events, comm/communicator.h StreamTimer): it must be measured (> 0 on some step), not the ~0 of the
# host's wall time around NCCL's non-blocking wait().
rm -f "$out"/main_cuda_nccl.jsonl
needs_bin main_cuda_nccl && step main_cuda_nccl 120 "$bin" train --config configs/main.ini --device cuda \
  --dist.backend nccl --train.steps 40 --metrics "$out/main_cuda_nccl.jsonl" &&
  step exposed_comm 15 "$py" bench/gpu/check_exposed.py "$out/main_cuda_nccl.jsonl"

# ---- NCCL collectives, 1 rank -----------------------------------------------------------------------------------
needs_bin commbench && step commbench 60 "$bin" commbench --dist.backend nccl -b 8 -e 256M -f 4 \
  --json "$out/commbench_nccl.json"

# ---- deltatune vs PyTorch eager ----------------------------------------------------------------------------------
# run.py stops starting runs 15 s before its own limit, so that it ends on its own and writes every row.
bench_cap=${BENCH_CAP_S:-240}
t=$(left "$bench_cap")
if [ "$t" -ge 35 ]; then
  # shellcheck disable=SC2086  # BENCH_ARGS: extra words, e.g. "--models t5-3b"
  step bench "$bench_cap" "$py" bench/gpu/run.py --out "$out/gpu.json" --budget-s $(( t - 15 )) ${BENCH_ARGS:-}
elif wanted bench; then
  record bench skipped -1 0 "$bench_cap" "the time budget was spent"
fi

# ---- host threads: the CPU main job, 2 ranks as mpirun binds them (one core each), 150 steps (a 64-example
# Fisher and eval: start-up only), at the default (0: the cores a rank is bound to) and at 8 threads a rank,
# the old default there (the node's 16 cores / 2 ranks, on one bound core each).
for n in 0 8; do
  needs_bin threads_$n && step threads_$n 45 mpirun -np 2 "$bin" train --config configs/main.ini --device cpu \
    --threads $n --train.steps 150 --train.eval-every 0 --train.eval-max 64 --fish.samples 64 \
    --metrics "$out/threads_$n.jsonl"
done
ls "$out"/threads_*.jsonl > /dev/null 2>&1 && "$py" bench/gpu/report.py threads "$out"

# ---- every other test (-LE gpu: those ran above), with what time is left: the CPU suite runs on every CI ----------
[ -f "$build/CTestTestfile.cmake" ] && step ctest 180 ctest --test-dir "$build" -LE gpu -j 8 ${CTEST_ARGS:-} --output-on-failure \
  --timeout 120 --output-junit "$out/ctest.xml"

# ---- summary (and, under the device tool, one archive) --------------------------------------------------------
"$py" bench/gpu/report.py summary "$out"
echo "[gpu-check] $(( $(date +%s) - start )) s in all; results in $out"
if [ $pack -eq 1 ]; then
  keep="status.json summary.txt gpu.json gpu.md threads.json commbench_nccl.json"
  (cd "$out" && tar -czf /tmp/gpu-check.tar.gz --exclude gpu-check.tar.gz . && mv /tmp/gpu-check.tar.gz . &&
    for f in *; do [[ " $keep gpu-check.tar.gz " == *" $f "* ]] || rm -rf -- "$f"; done)
  echo "[gpu-check] packed everything into $out/gpu-check.tar.gz (kept: $keep)"
fi
