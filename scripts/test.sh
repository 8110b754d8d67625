#!/usr/bin/env bash
# The project's test command (README quick start and CI): fetches the demo model and the
# sentence embedder when missing, starts the real components the cluster tests use (a one-node
# Slurm cluster, a local S3 server), then runs every test of the workspace, the model fixture
# tests, the embedding scorer tests and the Slurm / shared-cache tests included.
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
# The Slurm and S3 tests start these themselves too (the scripts are idempotent); they skip,
# with a loud line, only where a component cannot be installed.
scripts/slurm-up.sh ||
    echo "!!! SLURM UNAVAILABLE: tests/slurm.rs will skip (see scripts/slurm-up.sh's message)" >&2
scripts/s3-up.sh >/dev/null ||
    echo "!!! S3 UNAVAILABLE: the S3 case of tests/remote.rs will skip (see scripts/s3-up.sh)" >&2
cargo test --workspace "$@"
