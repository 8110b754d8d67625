//! The reference model's log-probs of every pair: computed once, before the first step, with
//! the stage's input model (the policy before training), in batches, and kept in the partial
//! directory, so a resumed run reads them instead of computing them again.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::llm::loss::DEFAULT_CHUNK;
use crate::llm::{pair_logps, LlamaModel, LlmError, Mode};
use crate::train::pairs::PairRow;

/// The file in the partial directory.
pub const REFERENCE_FILE: &str = "reference_logps.json";

/// The summed completion log-probs of chosen and rejected of every pair, by its line of
/// `pairs.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceLogps {
    /// The run they belong to (the checkpoint's fingerprint).
    pub fingerprint: String,
    /// Seconds the computation took.
    pub seconds: f64,
    /// `(line, chosen, rejected)`.
    pub pairs: Vec<(usize, f64, f64)>,
}

/// Why the reference log-probs could not be computed or kept.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("dpo: cannot compute the reference log-probs: {0}")]
    Llm(#[from] LlmError),
    #[error("dpo: cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ReferenceLogps {
    /// `(chosen, rejected)` of each row, in order; `None` when a row is missing.
    pub fn of(&self, rows: &[&PairRow]) -> Option<Vec<(f64, f64)>> {
        let by_line: HashMap<usize, (f64, f64)> =
            self.pairs.iter().map(|&(l, c, r)| (l, (c, r))).collect();
        rows.iter().map(|r| by_line.get(&r.line).copied()).collect()
    }
}

/// The reference log-probs of `rows` for the run `fingerprint`: read from `partial` when a
/// complete set of this run is there (`true`), else computed with `model` in batches of
/// `batch_size` pairs and written there (`false`).
pub fn load_or_compute(
    partial: &Path,
    fingerprint: &str,
    model: &LlamaModel,
    rows: &[&PairRow],
    (pad, batch_size): (u32, usize),
) -> Result<(ReferenceLogps, bool), ReferenceError> {
    let path = partial.join(REFERENCE_FILE);
    if let Some(saved) = read(&path) {
        if saved.fingerprint == fingerprint && saved.of(rows).is_some() {
            return Ok((saved, true));
        }
    }
    let computed = compute(model, rows, pad, batch_size, fingerprint)?;
    write(&path, &computed)?;
    Ok((computed, false))
}

/// A saved set, if it reads; anything else is computed again.
fn read(path: &Path) -> Option<ReferenceLogps> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Scores `rows` in evaluation mode, shortest first so batches pad little.
pub fn compute(
    model: &LlamaModel,
    rows: &[&PairRow],
    pad: u32,
    batch_size: usize,
    fingerprint: &str,
) -> Result<ReferenceLogps, LlmError> {
    let clock = Instant::now();
    let mut order: Vec<&PairRow> = rows.to_vec();
    order.sort_by_key(|r| r.len());
    let mut pairs = Vec::with_capacity(rows.len());
    for batch in order.chunks(batch_size.max(1)) {
        let preference: Vec<_> = batch.iter().map(|r| r.pair.clone()).collect();
        let (chosen, rejected) = pair_logps(model, &preference, pad, Mode::Eval, DEFAULT_CHUNK)?;
        let chosen = chosen.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
        let rejected = rejected
            .to_dtype(candle_core::DType::F64)?
            .to_vec1::<f64>()?;
        for ((row, c), r) in batch.iter().zip(chosen).zip(rejected) {
            if !(c.is_finite() && r.is_finite()) {
                return Err(LlmError::Invalid(format!(
                    "the reference log-probs of pair {} are not finite ({c}, {r})",
                    row.describe()
                )));
            }
            pairs.push((row.line, c, r));
        }
    }
    pairs.sort_by_key(|p| p.0);
    Ok(ReferenceLogps {
        fingerprint: fingerprint.to_string(),
        seconds: clock.elapsed().as_secs_f64(),
        pairs,
    })
}

/// Writes through a synced temp file and a rename: a crash leaves no half file.
fn write(path: &Path, reference: &ReferenceLogps) -> Result<(), ReferenceError> {
    let tmp = path.with_extension("json.tmp");
    let error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReferenceError::Write { path, source }
    };
    let text = serde_json::to_string(reference).map_err(std::io::Error::other);
    let mut file = std::fs::File::create(&tmp).map_err(error(&tmp))?;
    text.and_then(|t| file.write_all(t.as_bytes()))
        .and_then(|()| file.sync_all())
        .map_err(error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(error(path))
}
