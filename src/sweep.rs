//! `pipe run --sweep`: the cartesian product of `-s key=a,b` overrides (Hydra's multirun
//! syntax), run one variant after another in one workspace, or on Slurm with every variant's
//! jobs submitted at once. Stages whose keys are equal across variants are built once (by the
//! first variant that needs them, or as one job) and read by the others; a failing variant
//! does not stop the rest. The sweep is recorded under
//! `artifacts/.sweeps/` so that `pipe compare` can put its rows first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use pipe_stages::DynStage;
use serde::{Deserialize, Serialize};

use crate::cli::{Globals, RunArgs};
use crate::config::{Override, PipelineConfig};
use crate::digest::DigestCache;
use crate::error::{PipeError, Result};
use crate::executor::jobs::{BatchOutcome, PlanRun};
use crate::executor::{self, ExecutorKind, JobInvocation};
use crate::lock::RunLock;
use crate::report::Why;
use crate::runner::{execute, plan, Action, Plan, RunOptions, Workspace};
use crate::store::{now_ms, Store};
use crate::ui::{human_duration, TerminalUi};
use crate::verify;

/// The most variants one sweep may have: a typo in a value list should not queue a month.
pub const MAX_VARIANTS: usize = 1024;

/// The directory under the artifact store that holds the sweep records.
pub const SWEEPS_DIR: &str = ".sweeps";

/// The version of [`SweepRecord`]'s layout.
const RECORD_FORMAT: u32 = 1;

/// One combination of override values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// Every override of this variant as `key=value`, in command-line order.
    pub overrides: Vec<String>,
    /// The keys given more than one value, with this variant's value.
    pub swept: Vec<(String, String)>,
}

impl Variant {
    /// `orpo.beta=0.1 orpo.learning_rate=5e-5`, or `(no swept key)`.
    pub fn label(&self) -> String {
        if self.swept.is_empty() {
            return "(no swept key)".to_string();
        }
        let parts: Vec<String> = self.swept.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.join(" ")
    }
}

/// The variants of `-s` overrides whose values may be comma-separated lists: their cartesian
/// product, the first override varying slowest (as Hydra's multirun).
pub fn expand(raw: &[String]) -> Result<Vec<Variant>> {
    let mut variants = vec![Variant {
        overrides: Vec::new(),
        swept: Vec::new(),
    }];
    for item in raw {
        let (key, text) = item.split_once('=').ok_or_else(|| {
            PipeError::Usage(format!(
                "-s {item}: expected KEY=VALUE or KEY=V1,V2,..., e.g. -s orpo.beta=0.1,0.2"
            ))
        })?;
        let key = key.trim();
        let values = split_values(text).map_err(|e| PipeError::Usage(format!("-s {item}: {e}")))?;
        let swept = values.len() > 1;
        if swept && key == "project.artifacts" {
            return Err(PipeError::Usage(format!(
                "-s {item}: a sweep runs in one artifact store; sweep other keys, or run once per store"
            )));
        }
        let total = variants.len() * values.len();
        if total > MAX_VARIANTS {
            return Err(PipeError::Usage(format!(
                "-s {item}: the sweep would have {total} variants, more than {MAX_VARIANTS}; give fewer values"
            )));
        }
        variants = variants
            .into_iter()
            .flat_map(|v| {
                values.iter().map(move |value| {
                    let mut next = v.clone();
                    next.overrides.push(format!("{key}={value}"));
                    if swept {
                        next.swept.push((key.to_string(), value.clone()));
                    }
                    next
                })
            })
            .collect();
    }
    Ok(variants)
}

/// Splits a value list at the commas outside quotes and brackets: `0.1,0.2` is two values,
/// `"a,b"` and `[1, 2]` are one each. Values are trimmed; an empty one is an error.
pub fn split_values(text: &str) -> std::result::Result<Vec<String>, String> {
    let mut values = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some('"'), '\\') => {
                current.push(c);
                if let Some(next) = chars.next() {
                    current.push(next);
                }
                continue;
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("`{c}` closes nothing in `{text}`"))?;
            }
            (None, ',') if depth == 0 => {
                values.push(finish_value(&current, text)?);
                current.clear();
                continue;
            }
            (None, _) => {}
        }
        current.push(c);
    }
    if let Some(q) = quote {
        return Err(format!("unclosed {q} in `{text}`"));
    }
    if depth > 0 {
        return Err(format!("unclosed bracket in `{text}`"));
    }
    values.push(finish_value(&current, text)?);
    Ok(values)
}

fn finish_value(value: &str, text: &str) -> std::result::Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(format!(
            "empty value in `{text}`; separate values with single commas, quote a value that holds one"
        ));
    }
    Ok(value.to_string())
}

/// One variant with its loaded workspace.
struct Loaded<'r> {
    variant: Variant,
    ws: Workspace<'r>,
}

/// `pipe run --sweep`: validates every variant's config first (a typo fails before anything
/// runs), then runs them one after another (on Slurm: all their jobs at once), or with
/// `--dry-run` shows what each would do.
pub fn run(
    globals: &Globals,
    args: &RunArgs,
    registry: &[Box<dyn DynStage>],
    ui: &TerminalUi,
) -> Result<()> {
    let variants = expand(&globals.set)?;
    let mut loaded = load_all(&globals.config, variants, registry)?;
    let opts = args.options();
    let loud = !globals.quiet;
    let kind = executor::kind(&loaded[0].ws, args.executor.as_deref())?;
    for l in &mut loaded {
        l.ws.batch = kind != ExecutorKind::Local;
    }
    if args.dry_run {
        return dry_run(&loaded, &opts);
    }
    let store = loaded[0].ws.store.clone();
    let lock = executor::lock_for_run(&loaded[0].ws)?;
    let mut sweep = Sweep::new(&store, &loaded);
    sweep.save()?;
    if kind == ExecutorKind::Slurm {
        let mut invocation = crate::app::invocation(&loaded[0].ws, globals);
        invocation.overrides.clear(); // each variant's jobs get the variant's own
        sweep.run_together(&loaded, &opts, ui, &lock, &invocation)?;
    } else {
        sweep.run_one_by_one(&loaded, &opts, ui, loud)?;
    }
    sweep.record.finished_at_ms = Some(now_ms());
    sweep.save()?;
    if loud || sweep.failures() > 0 {
        print_summary(&sweep.record, &sweep.path, globals.verbose);
    }
    match sweep.failures() {
        0 => Ok(()),
        n => Err(PipeError::Sweep(format!(
            "{n} of {} variants failed; the others ran (see the summary above, or {})",
            loaded.len(),
            sweep.path.display()
        ))),
    }
}

fn load_all<'r>(
    config: &Path,
    variants: Vec<Variant>,
    registry: &'r [Box<dyn DynStage>],
) -> Result<Vec<Loaded<'r>>> {
    let mut loaded: Vec<Loaded<'r>> = Vec::with_capacity(variants.len());
    for variant in variants {
        let overrides = variant
            .overrides
            .iter()
            .map(|raw| Override::parse(raw))
            .collect::<Result<Vec<_>>>()?;
        let cfg = PipelineConfig::load(config, &overrides, registry)?;
        let ws = Workspace::new(cfg, registry)?;
        if let Some(first) = loaded.first() {
            if first.ws.store.root() != ws.store.root() {
                return Err(PipeError::Usage(format!(
                    "variant {} ({}) stores its artifacts in {}, the first in {}; a sweep runs in one store",
                    loaded.len() + 1,
                    variant.label(),
                    ws.store.root().display(),
                    first.ws.store.root().display()
                )));
            }
        }
        loaded.push(Loaded { variant, ws });
    }
    Ok(loaded)
}

/// The keys a plan reads or builds, by stage.
fn plan_keys(plan: &Plan) -> BTreeMap<String, String> {
    plan.steps
        .iter()
        .map(|s| (s.stage.to_string(), s.key.clone()))
        .collect()
}

/// `--dry-run`: each variant's plan, with the stages an earlier variant would build marked
/// shared; nothing runs and nothing is recorded.
fn dry_run(loaded: &[Loaded<'_>], opts: &RunOptions) -> Result<()> {
    let store = &loaded[0].ws.store;
    let mut digests = DigestCache::load(store.digest_cache_path());
    let mut built: BTreeMap<(String, String), usize> = BTreeMap::new();
    let (mut runs, mut shared, mut cached) = (0, 0, 0);
    for (i, l) in loaded.iter().enumerate() {
        let mut plan = plan(&l.ws, opts, &mut digests)?;
        verify::check_reads(&l.ws, &mut plan, false)?;
        println!("variant {}/{}: {}", i + 1, loaded.len(), l.variant.label());
        for step in &plan.steps {
            let id = (step.stage.to_string(), step.key.clone());
            let (word, note) = match &step.action {
                Action::Cached(_) | Action::Pulled(_) => {
                    cached += 1;
                    ("cached", String::new())
                }
                Action::Reuse { .. } => {
                    cached += 1;
                    ("reused", String::new())
                }
                Action::Run(_) if built.contains_key(&id) => {
                    shared += 1;
                    ("shared", format!(" (built by variant {})", built[&id] + 1))
                }
                Action::Run(why) => {
                    runs += 1;
                    built.insert(id, i);
                    ("would run", format!(" ({why})"))
                }
            };
            println!("  {:<10} {word:<9} {}{note}", step.stage, step.key);
        }
    }
    digests.save()?;
    println!(
        "{} variants: {runs} stage runs, {shared} shared between variants, {cached} cached \
         ({} runs without sharing)",
        loaded.len(),
        runs + shared
    );
    Ok(())
}

/// A sweep's record in `artifacts/.sweeps/<id>.json`: what `pipe compare` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRecord {
    pub format: u32,
    pub id: String,
    /// Unix milliseconds.
    pub started_at_ms: u64,
    /// Set when every variant has had its turn.
    pub finished_at_ms: Option<u64>,
    /// The keys given more than one value.
    pub swept: Vec<String>,
    pub variants: Vec<VariantRecord>,
}

/// One variant of a recorded sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantRecord {
    /// All its overrides, `key=value`.
    pub overrides: Vec<String>,
    /// The swept keys and this variant's values.
    pub swept: BTreeMap<String, String>,
    /// Stage -> the key of the artifact the variant built or read.
    pub keys: BTreeMap<String, String>,
    pub outcome: VariantOutcome,
}

/// How a variant ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum VariantOutcome {
    /// Not run yet (the sweep is under way, or was killed).
    Pending,
    Ok {
        ran: Vec<String>,
        cached: Vec<String>,
        seconds: f64,
    },
    Failed {
        /// The stage that failed, when a stage did.
        stage: Option<String>,
        message: String,
        seconds: f64,
    },
}

impl SweepRecord {
    /// A variant's swept values in the order the keys were given.
    pub fn label(&self, v: &VariantRecord) -> String {
        Variant {
            overrides: v.overrides.clone(),
            swept: self
                .swept
                .iter()
                .filter_map(|k| v.swept.get(k).map(|value| (k.clone(), value.clone())))
                .collect(),
        }
        .label()
    }

    /// The stage key of every variant, for `pipe compare`'s ordering.
    pub fn keys_of(&self, stage: &str) -> Vec<String> {
        self.variants
            .iter()
            .filter_map(|v| v.keys.get(stage).cloned())
            .collect()
    }
}

/// The record of the most recently started sweep of a store, if any can be read.
pub fn latest_record(store: &Store) -> Option<SweepRecord> {
    let dir = store.root().join(SWEEPS_DIR);
    let read = std::fs::read_dir(dir).ok()?;
    read.flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| {
            let bytes = std::fs::read(e.path()).ok()?;
            serde_json::from_slice::<SweepRecord>(&bytes).ok()
        })
        .max_by_key(|r| (r.started_at_ms, r.id.clone()))
}

/// The state of a running sweep.
struct Sweep {
    record: SweepRecord,
    path: PathBuf,
    digests: DigestCache,
    /// (stage, key) -> the variant that built it in this sweep.
    built: BTreeMap<(String, String), usize>,
    /// (stage, key) -> the variant in which it failed.
    failed: BTreeMap<(String, String), usize>,
}

/// What one variant's turn came to.
struct Turn {
    keys: BTreeMap<String, String>,
    result: std::result::Result<Ran, Failure>,
}

/// The stages a variant ran, and those it found cached or reused.
struct Ran {
    ran: Vec<String>,
    cached: Vec<String>,
}

/// Why a variant failed: the stage, when a stage did.
struct Failure {
    stage: Option<String>,
    message: String,
}

impl Failure {
    fn new(stage: Option<String>, message: String) -> Self {
        Self { stage, message }
    }
}

impl Sweep {
    fn new(store: &Store, loaded: &[Loaded<'_>]) -> Self {
        let started_at_ms = now_ms();
        let overrides: Vec<&Vec<String>> = loaded.iter().map(|l| &l.variant.overrides).collect();
        let digest = blake3::hash(
            serde_json::to_string(&overrides)
                .unwrap_or_default()
                .as_bytes(),
        );
        let id = format!("{started_at_ms}-{}", &digest.to_hex()[..8]);
        let mut swept: Vec<String> = Vec::new();
        for l in loaded {
            for (k, _) in &l.variant.swept {
                if !swept.contains(k) {
                    swept.push(k.clone());
                }
            }
        }
        let variants = loaded
            .iter()
            .map(|l| VariantRecord {
                overrides: l.variant.overrides.clone(),
                swept: l.variant.swept.iter().cloned().collect(),
                keys: BTreeMap::new(),
                outcome: VariantOutcome::Pending,
            })
            .collect();
        Self {
            path: store.root().join(SWEEPS_DIR).join(format!("{id}.json")),
            record: SweepRecord {
                format: RECORD_FORMAT,
                id,
                started_at_ms,
                finished_at_ms: None,
                swept,
                variants,
            },
            digests: DigestCache::load(store.digest_cache_path()),
            built: BTreeMap::new(),
            failed: BTreeMap::new(),
        }
    }

    fn failures(&self) -> usize {
        self.record
            .variants
            .iter()
            .filter(|v| matches!(v.outcome, VariantOutcome::Failed { .. }))
            .count()
    }

    /// Plans and runs variant `i`; every error is the variant's, none stops the sweep.
    fn run_variant(
        &mut self,
        i: usize,
        l: &Loaded<'_>,
        opts: &RunOptions,
        ui: &TerminalUi,
    ) -> Turn {
        let mut plan = match plan(&l.ws, opts, &mut self.digests) {
            Ok(plan) => plan,
            Err(e) => {
                return Turn {
                    keys: BTreeMap::new(),
                    result: Err(Failure::new(None, e.to_string())),
                }
            }
        };
        let _ = self.digests.save();
        self.share_forced(&mut plan, &l.ws.store);
        let keys = plan_keys(&plan);
        if let Some(turn) = self.known_failure(&plan, &keys) {
            return turn;
        }
        if let Err(e) = verify::check_reads(&l.ws, &mut plan, true) {
            return Turn {
                keys,
                result: Err(Failure::new(None, e.to_string())),
            };
        }
        crate::remote::pull_stale(&l.ws, &mut plan, ui);
        let result = execute(&l.ws, &plan, ui, false);
        for step in &plan.steps {
            if matches!(step.action, Action::Run(_)) {
                self.built
                    .entry((step.stage.to_string(), step.key.clone()))
                    .or_insert(i);
            }
        }
        let result = match result {
            Ok(outcome) => {
                let mut kept = outcome.cached;
                kept.extend(outcome.reused);
                Ok(Ran {
                    ran: outcome.ran,
                    cached: kept,
                })
            }
            Err(PipeError::StageFailed { stage, message }) => {
                let key = keys.get(&stage).cloned().unwrap_or_default();
                self.built.remove(&(stage.clone(), key.clone()));
                self.failed.insert((stage.clone(), key), i);
                Err(Failure::new(
                    Some(stage.clone()),
                    format!("stage `{stage}` failed: {message}"),
                ))
            }
            Err(e) => Err(Failure::new(None, e.to_string())),
        };
        Turn { keys, result }
    }

    /// On this machine: one variant after another.
    fn run_one_by_one(
        &mut self,
        loaded: &[Loaded<'_>],
        opts: &RunOptions,
        ui: &TerminalUi,
        loud: bool,
    ) -> Result<()> {
        for (i, l) in loaded.iter().enumerate() {
            if loud {
                println!(
                    "== variant {}/{}: {}",
                    i + 1,
                    loaded.len(),
                    l.variant.label()
                );
            }
            let clock = Instant::now();
            let outcome = self.run_variant(i, l, opts, ui);
            self.finish_variant(i, outcome, clock.elapsed().as_secs_f64())?;
        }
        Ok(())
    }

    /// On a batch system: every variant is planned first, then the jobs of all of them are
    /// submitted at once (a stage key several variants share is one job, built once); each
    /// variant's outcome is what its own jobs came to.
    fn run_together(
        &mut self,
        loaded: &[Loaded<'_>],
        opts: &RunOptions,
        ui: &TerminalUi,
        lock: &RunLock,
        invocation: &JobInvocation,
    ) -> Result<()> {
        let clock = Instant::now();
        let mut planned: Vec<(usize, Plan)> = Vec::new();
        for (i, l) in loaded.iter().enumerate() {
            match self.plan_variant(l, opts, ui) {
                Ok(plan) => planned.push((i, plan)),
                Err(turn) => self.finish_variant(i, turn, 0.0)?,
            }
        }
        let batch = executor::slurm_batch(invocation, Some(lock))?;
        let runs: Vec<PlanRun<'_>> = planned
            .iter()
            .map(|(i, plan)| PlanRun {
                ws: &loaded[*i].ws,
                plan,
                overrides: &loaded[*i].variant.overrides,
            })
            .collect();
        let result = batch.execute_plans(&runs, ui, false);
        let seconds = clock.elapsed().as_secs_f64();
        match result {
            Ok(outcome) => {
                let mut claimed = BTreeSet::new();
                for (i, plan) in &planned {
                    let turn = turn_of(plan, &outcome, &mut claimed);
                    self.finish_variant(*i, turn, seconds)?;
                }
                Ok(())
            }
            Err(e) => {
                for (i, plan) in &planned {
                    let turn = Turn {
                        keys: plan_keys(plan),
                        result: Err(Failure::new(None, e.to_string())),
                    };
                    self.finish_variant(*i, turn, seconds)?;
                }
                Err(e)
            }
        }
    }

    /// Variant `l`'s plan, its reads verified; a failure is the variant's turn.
    fn plan_variant(
        &mut self,
        l: &Loaded<'_>,
        opts: &RunOptions,
        ui: &TerminalUi,
    ) -> std::result::Result<Plan, Turn> {
        let mut plan = plan(&l.ws, opts, &mut self.digests).map_err(|e| Turn {
            keys: BTreeMap::new(),
            result: Err(Failure::new(None, e.to_string())),
        })?;
        let _ = self.digests.save();
        verify::check_reads(&l.ws, &mut plan, true).map_err(|e| Turn {
            keys: plan_keys(&plan),
            result: Err(Failure::new(None, e.to_string())),
        })?;
        crate::remote::pull_stale(&l.ws, &mut plan, ui);
        Ok(plan)
    }

    /// `--force` and `--from` re-run the selected stages once per sweep, not once per variant:
    /// what an earlier variant of this sweep built is read from the cache.
    fn share_forced(&self, plan: &mut Plan, store: &Store) {
        for step in &mut plan.steps {
            let forced = matches!(step.action, Action::Run(Why::Forced | Why::From(_)));
            if !forced
                || !self
                    .built
                    .contains_key(&(step.stage.to_string(), step.key.clone()))
            {
                continue;
            }
            if let Some(entry) = store.lookup(step.stage, &step.key) {
                step.action = Action::Cached(entry);
            }
        }
    }

    /// A variant that would run a stage key that already failed in this sweep fails without
    /// running it again (the same inputs fail the same way).
    fn known_failure(&self, plan: &Plan, keys: &BTreeMap<String, String>) -> Option<Turn> {
        plan.steps.iter().find_map(|step| {
            let id = (step.stage.to_string(), step.key.clone());
            let by = self.failed.get(&id)?;
            matches!(step.action, Action::Run(_)).then(|| Turn {
                keys: keys.clone(),
                result: Err(Failure::new(
                    Some(step.stage.to_string()),
                    format!(
                        "not run: stage `{}` {} already failed in variant {}",
                        step.stage,
                        step.key,
                        by + 1
                    ),
                )),
            })
        })
    }

    fn finish_variant(&mut self, i: usize, turn: Turn, seconds: f64) -> Result<()> {
        let v = &mut self.record.variants[i];
        v.keys = turn.keys;
        v.outcome = match turn.result {
            Ok(Ran { ran, cached }) => VariantOutcome::Ok {
                ran,
                cached,
                seconds,
            },
            Err(Failure { stage, message }) => {
                eprintln!("variant {} failed: {message}", i + 1);
                VariantOutcome::Failed {
                    stage,
                    message,
                    seconds,
                }
            }
        };
        self.save()
    }

    /// Rewrites the record whole (a temp file renamed over it): a killed sweep leaves the
    /// variants done so far.
    fn save(&self) -> Result<()> {
        let dir = self.path.parent().expect("the record lives in .sweeps");
        std::fs::create_dir_all(dir).map_err(|e| PipeError::io(dir, e))?;
        let text = serde_json::to_string_pretty(&self.record).map_err(|e| PipeError::Store {
            path: self.path.clone(),
            message: format!("cannot encode the sweep record: {e}"),
        })?;
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, text + "\n").map_err(|e| PipeError::io(&tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| PipeError::io(&self.path, e))
    }
}

/// What a variant's jobs came to: the first of its stages that failed (or was skipped after
/// a failure), else ok. A stage key several variants share counts as run by the first that
/// planned it (`claimed`) and as cached by the others, as in a sweep run one by one.
fn turn_of(plan: &Plan, batch: &BatchOutcome, claimed: &mut BTreeSet<(String, String)>) -> Turn {
    let keys = plan_keys(plan);
    let failed = plan.steps.iter().find_map(|s| {
        let why = batch.failed.get(&(s.stage.to_string(), s.key.clone()))?;
        Some((s.stage, why))
    });
    if let Some((stage, why)) = failed {
        let message = format!("stage `{stage}` failed: {why}");
        return Turn {
            keys,
            result: Err(Failure::new(Some(stage.to_string()), message)),
        };
    }
    let (mut ran, mut cached) = (Vec::new(), Vec::new());
    for step in &plan.steps {
        let first = claimed.insert((step.stage.to_string(), step.key.clone()));
        if matches!(step.action, Action::Run(_)) && first {
            ran.push(step.stage.to_string());
        } else {
            cached.push(step.stage.to_string());
        }
    }
    Turn {
        keys,
        result: Ok(Ran { ran, cached }),
    }
}

/// Each variant with its outcome, after the whole sweep.
fn print_summary(record: &SweepRecord, path: &Path, verbose: bool) {
    let ok = record
        .variants
        .iter()
        .filter(|v| matches!(v.outcome, VariantOutcome::Ok { .. }))
        .count();
    // Wall time: on Slurm the variants ran at the same time.
    let ended = record.finished_at_ms.unwrap_or_else(now_ms);
    let seconds = ended.saturating_sub(record.started_at_ms) as f64 / 1000.0;
    println!(
        "sweep {}: {} variants, {ok} ok, {} failed in {} (recorded in {})",
        record.id,
        record.variants.len(),
        record.variants.len() - ok,
        human_duration(seconds),
        path.display()
    );
    let labels: Vec<String> = record.variants.iter().map(|v| record.label(v)).collect();
    let width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    for (i, (v, label)) in record.variants.iter().zip(&labels).enumerate() {
        let status = match &v.outcome {
            VariantOutcome::Ok {
                ran,
                cached,
                seconds,
            } => format!(
                "ok      {} ran, {} cached in {}",
                ran.len(),
                cached.len(),
                human_duration(*seconds)
            ),
            VariantOutcome::Failed { message, .. } => format!("FAILED  {message}"),
            VariantOutcome::Pending => "pending".to_string(),
        };
        println!("  {:>3}  {label:<width$}  {status}", i + 1);
        if verbose {
            for (stage, key) in &v.keys {
                println!("         {stage:<10} {key}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn values_split_at_top_level_commas_only() {
        assert_eq!(split_values("0.1,0.2").unwrap(), strings(&["0.1", "0.2"]));
        assert_eq!(
            split_values(" 5e-5 , 1e-4 ").unwrap(),
            strings(&["5e-5", "1e-4"])
        );
        assert_eq!(
            split_values("\"a,b\",c").unwrap(),
            strings(&["\"a,b\"", "c"])
        );
        assert_eq!(split_values("'a,b'").unwrap(), strings(&["'a,b'"]));
        assert_eq!(
            split_values("[\"q_proj\", \"v_proj\"],[\"all-linear\"]").unwrap(),
            strings(&["[\"q_proj\", \"v_proj\"]", "[\"all-linear\"]"])
        );
        assert_eq!(
            split_values("{ r = 4, alpha = 8 },{ r = 8 }").unwrap(),
            strings(&["{ r = 4, alpha = 8 }", "{ r = 8 }"])
        );
        assert_eq!(
            split_values("\"x\\\",y\"").unwrap(),
            strings(&["\"x\\\",y\""])
        );
        assert_eq!(split_values("plain").unwrap(), strings(&["plain"]));
    }

    #[test]
    fn malformed_lists_are_refused_with_the_reason() {
        assert!(split_values("0.1,,0.2")
            .unwrap_err()
            .contains("empty value"));
        assert!(split_values("0.1,").unwrap_err().contains("empty value"));
        assert!(split_values("\"a,b").unwrap_err().contains("unclosed \""));
        assert!(split_values("[1,2")
            .unwrap_err()
            .contains("unclosed bracket"));
        assert!(split_values("1]").unwrap_err().contains("closes nothing"));
    }

    #[test]
    fn expansion_is_the_cartesian_product_first_key_slowest() {
        let v = expand(&strings(&[
            "orpo.beta=0.1,0.2",
            "sft.max_steps=5",
            "orpo.learning_rate=5e-5,1e-4",
        ]))
        .unwrap();
        let labels: Vec<String> = v.iter().map(Variant::label).collect();
        assert_eq!(
            labels,
            strings(&[
                "orpo.beta=0.1 orpo.learning_rate=5e-5",
                "orpo.beta=0.1 orpo.learning_rate=1e-4",
                "orpo.beta=0.2 orpo.learning_rate=5e-5",
                "orpo.beta=0.2 orpo.learning_rate=1e-4",
            ])
        );
        assert_eq!(
            v[1].overrides,
            strings(&[
                "orpo.beta=0.1",
                "sft.max_steps=5",
                "orpo.learning_rate=1e-4"
            ])
        );
        let single = expand(&strings(&["sft.max_steps=5"])).unwrap();
        assert_eq!(single.len(), 1);
        assert_eq!(single[0].label(), "(no swept key)");
        assert_eq!(expand(&[]).unwrap().len(), 1);
    }

    #[test]
    fn oversized_and_malformed_sweeps_are_usage_errors() {
        let many: Vec<String> = (0..3)
            .map(|i| {
                format!(
                    "t.k{i}={}",
                    (0..11).map(|n| n.to_string()).collect::<Vec<_>>().join(",")
                )
            })
            .collect();
        let err = expand(&many).unwrap_err();
        assert!(err.to_string().contains("1331 variants"), "{err}");
        assert_eq!(err.exit_code(), 2);
        let err = expand(&strings(&["orpo.beta"])).unwrap_err();
        assert!(err.to_string().contains("KEY=VALUE"), "{err}");
        let err = expand(&strings(&["project.artifacts=a,b"])).unwrap_err();
        assert!(err.to_string().contains("one artifact store"), "{err}");
    }

    #[test]
    fn records_round_trip_and_the_latest_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_path_buf());
        assert!(latest_record(&store).is_none());
        let record = |id: &str, at: u64| SweepRecord {
            format: RECORD_FORMAT,
            id: id.into(),
            started_at_ms: at,
            finished_at_ms: Some(at + 5),
            swept: strings(&["orpo.beta"]),
            variants: vec![VariantRecord {
                overrides: strings(&["orpo.beta=0.1"]),
                swept: BTreeMap::from([("orpo.beta".into(), "0.1".into())]),
                keys: BTreeMap::from([("orpo".into(), format!("key-{id}"))]),
                outcome: VariantOutcome::Failed {
                    stage: Some("orpo".into()),
                    message: "boom".into(),
                    seconds: 1.5,
                },
            }],
        };
        let sweeps = dir.path().join(SWEEPS_DIR);
        std::fs::create_dir_all(&sweeps).unwrap();
        for r in [record("old", 1), record("new", 2)] {
            let text = serde_json::to_string(&r).unwrap();
            std::fs::write(sweeps.join(format!("{}.json", r.id)), text).unwrap();
        }
        std::fs::write(sweeps.join("torn.json"), "{").unwrap();
        let latest = latest_record(&store).unwrap();
        assert_eq!(latest, record("new", 2));
        assert_eq!(latest.keys_of("orpo"), strings(&["key-new"]));
    }
}
