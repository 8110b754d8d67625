//! `pipe show <stage>`: one artifact's manifest, metrics, files with sizes, the stage's own
//! summary and a few sample rows of its tabular outputs.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use crate::cli::ShowArgs;
use crate::digest::DigestCache;
use crate::error::{PipeError, Result};
use crate::fingerprint::explain;
use crate::runner::{plan, RunOptions, Workspace};
use crate::store::{format_time, Entry};
use crate::ui::{human_bytes, human_duration};

const SAMPLE_ROWS: usize = 3;
const SAMPLE_WIDTH: usize = 240;

/// Prints the chosen artifact of a stage.
pub fn print(ws: &Workspace, args: &ShowArgs) -> Result<()> {
    let stage = ws.dag.resolve(&args.stage, "show")?;
    let current = current_inputs(ws, stage)?;
    let entry = pick_entry(ws, stage, args.key.as_deref(), &current.key())?;
    if args.json {
        let json = serde_json::to_string_pretty(&entry.manifest).unwrap_or_default();
        println!("{json}");
        return Ok(());
    }
    let mut out = Stdout::default();
    write_header(&mut out, &entry, &current).map_err(stdout_err)?;
    write_metrics(&mut out, &entry).map_err(stdout_err)?;
    write_files(&mut out, &entry).map_err(stdout_err)?;
    let shown = ws.stage(stage).show(&entry.dir, &mut out);
    shown.map_err(|e| out.label(e, &entry.dir))?;
    write_samples(&mut out, &entry)
}

/// Standard output that remembers whether writing to it failed, so that an error of a
/// stage's `show` is blamed on stdout only when it came from stdout, and on the artifact
/// the stage was reading otherwise.
#[derive(Default)]
struct Stdout {
    failed: bool,
}

impl Stdout {
    fn label(&self, e: std::io::Error, reading: &Path) -> PipeError {
        if self.failed {
            stdout_err(e)
        } else {
            PipeError::Store {
                path: reading.to_path_buf(),
                message: format!(
                    "cannot show this artifact: {e}; `pipe verify` checks it against its manifest"
                ),
            }
        }
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = std::io::stdout().lock().write(buf);
        self.failed |= r.is_err();
        r
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let r = std::io::stdout().lock().flush();
        self.failed |= r.is_err();
        r
    }
}

/// The artifact of `stage` a command should use: the current key's if cached, else the
/// latest; `flag` names the option in errors (`--stage`).
pub fn current_entry(ws: &Workspace, stage: &str, flag: &str) -> Result<Entry> {
    let stage = ws.dag.resolve(stage, flag)?;
    let current = current_inputs(ws, stage)?;
    pick_entry(ws, stage, None, &current.key())
}

fn stdout_err(e: std::io::Error) -> PipeError {
    PipeError::io("<stdout>", e)
}

fn current_inputs(ws: &Workspace, stage: &str) -> Result<crate::fingerprint::KeyInputs> {
    let mut digests = DigestCache::load(ws.store.digest_cache_path());
    let opts = RunOptions {
        to: Some(stage.to_string()),
        ..RunOptions::default()
    };
    let plan = plan(ws, &opts, &mut digests)?;
    digests.save()?;
    let step = plan
        .steps
        .into_iter()
        .find(|s| s.stage == stage)
        .expect("--to includes the stage itself");
    Ok(step.inputs)
}

fn pick_entry(ws: &Workspace, stage: &str, key: Option<&str>, current: &str) -> Result<Entry> {
    let entries = ws.store.entries(stage);
    if let Some(prefix) = key {
        let matches: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.manifest.key.starts_with(prefix))
            .collect();
        return match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(PipeError::Usage(format!(
                "show {stage} --key {prefix}: no such artifact; keys: {}",
                list_keys(&entries)
            ))),
            _ => Err(PipeError::Usage(format!(
                "show {stage} --key {prefix}: ambiguous, matches {}",
                matches.len()
            ))),
        };
    }
    if let Some(e) = ws.store.lookup(stage, current) {
        return Ok(e);
    }
    ws.store.latest(stage).ok_or_else(|| {
        PipeError::Usage(format!(
            "`{stage}` has never run; `pipe run --to {stage}` runs it"
        ))
    })
}

fn list_keys(entries: &[Entry]) -> String {
    if entries.is_empty() {
        return "(none)".into();
    }
    let keys: Vec<&str> = entries.iter().map(|e| e.manifest.key.as_str()).collect();
    keys.join(", ")
}

fn write_header(
    out: &mut impl Write,
    entry: &Entry,
    current: &crate::fingerprint::KeyInputs,
) -> std::io::Result<()> {
    let m = &entry.manifest;
    let state = if m.key == current.key() {
        "current".to_string()
    } else {
        let reasons: Vec<String> = explain(current, &m.inputs)
            .iter()
            .map(|r| r.to_string())
            .collect();
        format!("stale: {}", reasons.join("; "))
    };
    writeln!(out, "{} {} ({state})", m.stage, m.key)?;
    writeln!(
        out,
        "  made {} in {} by pipe {}",
        format_time(m.finished_at_ms),
        human_duration(m.duration_s),
        m.pipe_version
    )?;
    writeln!(out, "  dir  {}", entry.dir.display())?;
    for (stage, key) in &m.inputs.upstream {
        writeln!(out, "  upstream {stage} {key}")?;
    }
    for (path, digest) in &m.inputs.inputs {
        writeln!(
            out,
            "  input {path} blake3:{}",
            &digest[..digest.len().min(16)]
        )?;
    }
    writeln!(out, "  config")?;
    if let serde_json::Value::Object(map) = &m.inputs.config {
        let mut keys: Vec<_> = map.iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        for (k, v) in keys {
            writeln!(out, "    {k} = {v}")?;
        }
    }
    Ok(())
}

fn write_metrics(out: &mut impl Write, entry: &Entry) -> std::io::Result<()> {
    if entry.manifest.metrics.is_empty() {
        return Ok(());
    }
    writeln!(out, "  metrics")?;
    for (k, v) in &entry.manifest.metrics {
        writeln!(out, "    {k:<24} {v}")?;
    }
    Ok(())
}

fn write_files(out: &mut impl Write, entry: &Entry) -> std::io::Result<()> {
    writeln!(out, "  files ({})", human_bytes(entry.size()))?;
    for f in &entry.manifest.outputs {
        writeln!(out, "    {:<28} {:>10}", f.path, human_bytes(f.size))?;
    }
    Ok(())
}

fn write_samples(out: &mut impl Write, entry: &Entry) -> Result<()> {
    for f in &entry.manifest.outputs {
        if f.path.ends_with(".jsonl") || f.path.ends_with(".csv") {
            write_sample_file(out, &entry.dir.join(&f.path), &f.path)?;
        }
    }
    Ok(())
}

/// The first rows of one output; an error names the file it could not read, or stdout.
fn write_sample_file(out: &mut impl Write, path: &Path, name: &str) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| PipeError::io(path, e))?;
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .take(SAMPLE_ROWS)
        .collect::<std::io::Result<_>>()
        .map_err(|e| PipeError::io(path, e))?;
    writeln!(out, "  sample rows of {name}").map_err(stdout_err)?;
    for line in lines {
        writeln!(out, "    {}", truncate(&line, SAMPLE_WIDTH)).map_err(stdout_err)?;
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let cut: String = s.chars().take(max).collect();
    format!("{cut}…")
}
