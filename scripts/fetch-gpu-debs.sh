#!/usr/bin/env bash
# scripts/fetch-gpu-debs.sh [DIR] — save the Debian 12 packages of scripts/gpu-debs.txt (about 31 MB) into DIR
# (default .gpu/debs, ignored by git) on a Debian 12 machine with apt. A GPU machine without a package registry
# (no Open MPI, HDF5, Boost, GoogleTest, fmt, sentencepiece or pkg-config there) gets them with the working tree;
# scripts/gpu-check.sh unpacks them into a prefix under /opt, never into /.
#   "fallback:" lines are shared libraries (HDF5's libcurl, MPI's) used only where that machine lacks them.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.gpu/debs}
list=scripts/gpu-debs.txt
mkdir -p "$dir/fallback"
main=$(grep -v '^#' "$list" | grep -v '^fallback:' | tr '\n' ' ')
fb=$(grep '^fallback:' "$list" | sed 's/^fallback://' | tr '\n' ' ')
# apt-get download needs package lists; fetch them once if this machine has none.
[ -n "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v -e lock -e partial)" ] || apt-get update -qq
# apt-get download fails as a whole on one unknown name: keep its messages to show why.
err=$(mktemp)
trap 'rm -f "$err"' EXIT
(cd "$dir" && apt-get download $main >/dev/null 2>"$err") || { cat "$err" >&2; exit 1; }
(cd "$dir/fallback" && apt-get download $fb >/dev/null 2>"$err") || { cat "$err" >&2; exit 1; }
echo "$(ls "$dir"/*.deb | wc -l) + $(ls "$dir"/fallback/*.deb | wc -l) packages, $(du -sh "$dir" | cut -f1) in $dir"
