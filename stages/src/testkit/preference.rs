//! A workspace for the preference stages' tests (orpo, dpo): the tiny model and committed
//! `model`, `sft` and `score` artifacts, with pairs whose preferred answer names a tool and
//! whose rejected answer is a refusal.

use std::path::{Path, PathBuf};

use crate::ingest::artifact::{Example as Row, TRAIN_FILE, VAL_FILE};
use crate::score::artifact::{Pair, PAIRS_FILE};
use crate::scoring::pairs::TextSource;

use super::{stage_artifact, write_tiny_model};

/// A workspace with the tiny model and committed `model`, `sft` and `score` artifacts.
pub struct Fixture {
    pub ws: tempfile::TempDir,
    pub model: PathBuf,
    pub sft: PathBuf,
    pub score: PathBuf,
}

/// `n` pairs: "what is ls 0?" → "ls is a tool" over "no idea".
pub fn tool_pairs(n: usize) -> Vec<Pair> {
    let words = [
        "ls", "cat", "grep", "sed", "awk", "cp", "mv", "rm", "tar", "ssh",
    ];
    (0..n)
        .map(|i| {
            let w = words[i % words.len()];
            Pair {
                id: format!("{i:016x}"),
                prompt: format!("what is {w} {i}?"),
                system: None,
                history: Vec::new(),
                chosen: format!("{w} is a tool"),
                rejected: "no idea".to_string(),
                chosen_score: Some(1.0),
                rejected_score: Some(0.0),
                chosen_source: TextSource::Reference,
                rejected_source: TextSource::Generated,
            }
        })
        .collect()
}

/// Writes `pairs` as a score artifact's pairs file in `dir`.
pub fn write_pairs(dir: &Path, pairs: &[Pair]) {
    std::fs::create_dir_all(dir).unwrap();
    let text: String = pairs
        .iter()
        .map(|p| serde_json::to_string(p).unwrap() + "\n")
        .collect();
    std::fs::write(dir.join(PAIRS_FILE), text).unwrap();
}

/// Writes `n` ingest rows ("what is tool 0?" → "tool 0 is a tool") to `path`.
pub fn write_rows(path: &Path, n: usize) {
    let text: String = (0..n)
        .map(|i| {
            let row = Row {
                id: format!("{i:016x}"),
                prompt: format!("what is tool {i}?"),
                response: format!("tool {i} is a tool"),
                system: None,
                category: None,
                source_row: i as u64 + 1,
                rejected: None,
                history: Vec::new(),
            };
            serde_json::to_string(&row).unwrap() + "\n"
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

/// The tiny model, a 2-step sft on it and a score artifact holding `pairs`.
pub fn fixture(pairs: &[Pair]) -> Fixture {
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    write_tiny_model(&root.join("tiny"), 5).unwrap();
    let model = stage_artifact("model", "[model]\npath = \"tiny\"\n", root, &[]);
    let ingest = root.join("ingest-out");
    std::fs::create_dir_all(&ingest).unwrap();
    write_rows(&ingest.join(TRAIN_FILE), 4);
    write_rows(&ingest.join(VAL_FILE), 2);
    let sft = stage_artifact(
        "sft",
        "[sft]\nmax_steps = 2\nbatch_size = 2\nlearning_rate = 1e-2\nsamples = 0\n[sft.lora]\nr = 4\nalpha = 8\n",
        root,
        &[("ingest", &ingest), ("model", &model)],
    );
    let score = root.join("score-out");
    write_pairs(&score, pairs);
    Fixture {
        ws,
        model,
        sft,
        score,
    }
}
