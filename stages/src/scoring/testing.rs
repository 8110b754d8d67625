//! Test support: the real all-MiniLM-L6-v2 for the embedding tests.

use std::path::PathBuf;

use super::embedder::Embedder;

/// `PIPE_TEST_EMBEDDER` (set by scripts/test.sh), else `<workspace>/models/all-MiniLM-L6-v2`.
/// Panics with what to run when neither exists: these tests must not pass silently.
pub fn minilm_dir() -> PathBuf {
    let dir = match std::env::var_os("PIPE_TEST_EMBEDDER") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(super::embedding::DEFAULT_MODEL),
    };
    assert!(
        dir.join("model.safetensors").is_file(),
        "the embedding tests need all-MiniLM-L6-v2 at {}: run scripts/fetch-embedder.sh \
         (or scripts/test.sh, which runs it and sets PIPE_TEST_EMBEDDER)",
        dir.display()
    );
    dir
}

/// The loaded model.
pub fn minilm() -> Embedder {
    let dir = minilm_dir();
    Embedder::load(&dir, None).unwrap_or_else(|e| panic!("{e}"))
}
