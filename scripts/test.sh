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
# TensorBoard's own reader checks the event files the trainers write (tests/tensorboard.rs):
# installed once into a venv under target/; the test fails rather than skips once it is there.
tb_venv="$root/target/tensorboard-venv"
if ! "$tb_venv/bin/python" -c "import tensorboard" 2>/dev/null; then
  { python3 -m venv "$tb_venv" && "$tb_venv/bin/pip" install --quiet tensorboard; } ||
    echo "warning: could not install tensorboard into $tb_venv; tests/tensorboard.rs is skipped" >&2
fi
if "$tb_venv/bin/python" -c "import tensorboard" 2>/dev/null; then
  export PIPE_TEST_TENSORBOARD_PYTHON="$tb_venv/bin/python" PIPE_REQUIRE_TENSORBOARD=1
fi
cargo test --workspace "$@"
