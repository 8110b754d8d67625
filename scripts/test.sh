#!/usr/bin/env bash
# The project's test command (README quick start and CI): fetches the demo model when missing,
# then runs every test of the workspace, the model fixture tests included.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
PIPE_TEST_MODEL=$(scripts/fetch-model.sh)
export PIPE_TEST_MODEL
cargo test --workspace "$@"
