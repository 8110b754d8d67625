#!/usr/bin/env bash
# The README's demo: fetches the demo model when missing, builds pipe (release) and runs the
# demo pipeline. Extra arguments go to `pipe run` (e.g. --dry-run, -s ingest.max_rows=100).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/fetch-model.sh >/dev/null
cargo build --release --quiet --bin pipe
exec target/release/pipe run "$@"
