#!/usr/bin/env bash
# The project's test command (README quick start and CI): fetches the demo model and the
# sentence embedder when missing, then runs every test of the workspace, the model fixture
# tests and the embedding scorer tests included.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
PIPE_TEST_MODEL=$(scripts/fetch-model.sh)
export PIPE_TEST_MODEL
PIPE_TEST_EMBEDDER=$(scripts/fetch-embedder.sh)
export PIPE_TEST_EMBEDDER
cargo test --workspace "$@"
