//! The per-step training log (`metrics.jsonl`, one JSON object a line, as TRL's
//! `log_history`). It is written to the partial directory as training goes, so a resumed run
//! keeps the lines up to its checkpoint and drops those of steps it will redo. Every line also
//! goes to a TensorBoard event file beside it (see [`super::tensorboard`]).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::tensorboard::{self, EventWriter, EVENTS_FILE};

/// One line of `metrics.jsonl`. Training fields are absent on the evaluation-only line of
/// step 0 (before training); `eval_*` fields are present on steps that evaluated.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    /// Optimizer steps completed.
    pub step: usize,
    /// Fractional epochs completed.
    pub epoch: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// The global gradient norm before clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Tokens (prompt and completion, no padding) through the model per second of this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_perplexity: Option<f64>,
    /// A trainer's own metrics under their TRL names (orpo: `rewards/margins`,
    /// `eval_rewards/accuracies`, ...), at the top level of the line as TRL logs them.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, f64>,
}

impl MetricRecord {
    /// The training fields of the line of optimizer step `step` (0-based) of `plan`, which
    /// did `outcome` on `tokens` tokens in `seconds`.
    pub fn for_step(
        plan: &super::Plan,
        step: usize,
        outcome: &super::StepOutcome,
        tokens: usize,
        seconds: f64,
    ) -> Self {
        MetricRecord {
            step: step + 1,
            epoch: plan.epoch_at(step + 1),
            loss: Some(outcome.loss),
            lr: Some(outcome.lr),
            grad_norm: Some(outcome.grad_norm),
            tokens_per_s: Some(tokens as f64 / seconds.max(1e-9)),
            ..MetricRecord::default()
        }
    }
}

/// Why the log could not be read or written; names the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct MetricsError {
    pub path: PathBuf,
    pub message: String,
}

/// An append-only writer of [`MetricRecord`] lines and of their TensorBoard events.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: File,
    events: EventWriter,
}

impl MetricsLog {
    /// Opens `path` for appending after keeping only its records of steps `<= keep_through`
    /// (`None`: start empty). Lines of steps after the checkpoint are redone by the resumed
    /// run, so keeping them would duplicate steps.
    pub fn open(path: &Path, keep_through: Option<usize>) -> Result<Self, MetricsError> {
        let kept = match keep_through {
            Some(step) if path.exists() => {
                read(path)?.into_iter().filter(|r| r.step <= step).collect()
            }
            _ => Vec::new(),
        };
        let mut text = String::new();
        for r in &kept {
            text.push_str(&to_line(r, path)?);
        }
        replace_file(path, text.as_bytes())?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| error(path, e))?;
        let events = open_events(&events_path(path), keep_through, &kept)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            events,
        })
    }

    /// Appends one record and flushes it (a crash loses at most the line being written).
    pub fn append(&mut self, record: &MetricRecord) -> Result<(), MetricsError> {
        let line = to_line(record, &self.path)?;
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| error(&self.path, e))?;
        let events = &mut self.events;
        events
            .write_scalars(record.step as i64, &scalars(record))
            .map_err(|e| error(events.path(), e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The TensorBoard event file beside a `metrics.jsonl`.
pub fn events_path(log: &Path) -> PathBuf {
    log.with_file_name(EVENTS_FILE)
}

/// The event file of a log opened with `keep_through`: resumed when it exists, else started
/// with the kept records (a checkpoint made before event files existed).
fn open_events(
    path: &Path,
    keep_through: Option<usize>,
    kept: &[MetricRecord],
) -> Result<EventWriter, MetricsError> {
    if let (Some(step), true) = (keep_through, path.exists()) {
        return EventWriter::resume(path, step).map_err(|e| error(path, e));
    }
    let mut events = EventWriter::create(path).map_err(|e| error(path, e))?;
    for r in kept {
        events
            .write_scalars(r.step as i64, &scalars(r))
            .map_err(|e| error(path, e))?;
    }
    Ok(events)
}

/// A record's numbers as TensorBoard scalars, named as in `metrics.jsonl` with a `train/` or
/// `eval/` prefix ([`tensorboard::tag`]); the step is the event's own.
pub fn scalars(record: &MetricRecord) -> Vec<(String, f32)> {
    let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(record) else {
        return Vec::new();
    };
    fields
        .iter()
        .filter(|(name, _)| name.as_str() != "step")
        .filter_map(|(name, value)| Some((tensorboard::tag(name), value.as_f64()? as f32)))
        .collect()
}

/// Copies the event file beside the log `from` to beside `to`, if there is one.
pub fn copy_events(from: &Path, to: &Path) -> std::io::Result<()> {
    let events = events_path(from);
    if events.exists() {
        std::fs::copy(&events, events_path(to))?;
    }
    Ok(())
}

/// Replaces `path` with `bytes` through a synced temp file and a rename: a crash mid-way
/// leaves the old log whole, never an emptied or half-written one.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), MetricsError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = File::create(&tmp).map_err(|e| error(&tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| error(path, e))
}

fn to_line(record: &MetricRecord, path: &Path) -> Result<String, MetricsError> {
    serde_json::to_string(record)
        .map(|s| s + "\n")
        .map_err(|e| error(path, e))
}

/// Every record of a `metrics.jsonl`; a torn last line (a crash mid-write) is skipped.
pub fn read(path: &Path) -> Result<Vec<MetricRecord>, MetricsError> {
    let file = File::open(path).map_err(|e| error(path, e))?;
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|e| error(path, e))?;
    let last = lines.len().saturating_sub(1);
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(r) => out.push(r),
            Err(_) if i == last => {}
            Err(e) => return Err(error(path, format!("line {}: {e}", i + 1))),
        }
    }
    Ok(out)
}

fn error(path: &Path, e: impl std::fmt::Display) -> MetricsError {
    MetricsError {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(step: usize) -> MetricRecord {
        MetricRecord {
            step,
            loss: Some(1.0 / (step as f64 + 1.0)),
            ..MetricRecord::default()
        }
    }

    #[test]
    fn resume_keeps_lines_through_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::open(&path, None).unwrap();
        for s in 0..5 {
            log.append(&record(s)).unwrap();
        }
        drop(log);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"step\": 5, \"epo")
            .unwrap();
        assert_eq!(read(&path).unwrap().len(), 5, "a torn last line is skipped");
        let mut log = MetricsLog::open(&path, Some(2)).unwrap();
        log.append(&record(3)).unwrap();
        let steps: Vec<usize> = read(&path).unwrap().iter().map(|r| r.step).collect();
        assert_eq!(steps, vec![0, 1, 2, 3]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("eval_loss") && !text.contains("extra"),
            "absent fields are omitted: {text}"
        );
        let mut log = MetricsLog::open(&path, Some(3)).unwrap();
        let mut own = record(4);
        own.extra.insert("rewards/margins".into(), 0.25);
        log.append(&own).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"rewards/margins\":0.25"), "{text}");
        assert_eq!(read(&path).unwrap().last().unwrap(), &own);
    }

    /// Issue 16: a resume rewrote metrics.jsonl in place (truncate, then write), so a crash
    /// or a reader in between found it empty. It is replaced whole by a rename now: a reader
    /// racing with resumes always sees every kept line.
    #[test]
    fn a_resume_replaces_the_log_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::open(&path, None).unwrap();
        for s in 0..200 {
            log.append(&record(s)).unwrap();
        }
        drop(log);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let resumer = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    MetricsLog::open(&path, Some(150)).unwrap();
                }
            })
        };
        for _ in 0..300 {
            let kept = read(&path).unwrap().len();
            assert!(kept >= 151, "a reader saw {kept} lines");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        resumer.join().unwrap();
    }

    #[test]
    fn every_line_is_also_a_tensorboard_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::open(&path, None).unwrap();
        log.append(&MetricRecord {
            eval_loss: Some(2.5),
            ..record(0)
        })
        .unwrap();
        let mut trained = MetricRecord {
            lr: Some(1e-3),
            ..record(1)
        };
        trained.extra.insert("rewards/margins".into(), 0.25);
        trained.extra.insert("eval_rewards/accuracies".into(), 0.75);
        log.append(&trained).unwrap();
        drop(log);
        let events = tensorboard::read(&events_path(&path)).unwrap();
        let steps: Vec<i64> = events.iter().map(|e| e.step).collect();
        assert_eq!(
            steps,
            vec![0, 0, 1],
            "the version record, then one event a line"
        );
        let mut tags: Vec<(String, f32)> = events[2].scalars.clone();
        tags.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            tags,
            vec![
                ("eval/rewards/accuracies".to_string(), 0.75),
                ("train/epoch".to_string(), 0.0),
                ("train/loss".to_string(), 0.5),
                ("train/lr".to_string(), 1e-3),
                ("train/rewards/margins".to_string(), 0.25),
            ]
        );
        assert!(events[1].scalars.contains(&("eval/loss".to_string(), 2.5)));

        MetricsLog::open(&path, Some(0)).unwrap();
        let steps: Vec<i64> = tensorboard::read(&events_path(&path))
            .unwrap()
            .iter()
            .map(|e| e.step)
            .collect();
        assert_eq!(
            steps,
            vec![0, 0],
            "a resume drops the events of steps it redoes"
        );

        // A checkpoint from before event files: the kept lines are written as events.
        std::fs::remove_file(events_path(&path)).unwrap();
        MetricsLog::open(&path, Some(0)).unwrap();
        assert_eq!(tensorboard::read(&events_path(&path)).unwrap().len(), 2);

        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        copy_events(&path, &out.join("metrics.jsonl")).unwrap();
        assert!(out.join(EVENTS_FILE).is_file());
    }
}
