//! Plans a run (which stages are cached, reused, or must run, and why) and executes the plan:
//! each stage writes into a scratch directory that is committed atomically on success.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use pipe_stages::{DynStage, InputDirs, Link, StageContext};

use crate::config::PipelineConfig;
use crate::dag::Dag;
use crate::digest::DigestCache;
use crate::error::{PipeError, Result};
use crate::fingerprint::{explain, KeyInputs, Reason, CACHE_FORMAT};
use crate::report::{Counts, Reporter, Why};
use crate::store::{now_ms, Entry, Manifest, Store};

/// A loaded workspace: validated config, the stages it uses, its graph and its store.
pub struct Workspace<'r> {
    pub config: PipelineConfig,
    pub registry: &'r [Box<dyn DynStage>],
    pub dag: Dag,
    pub store: Store,
    /// Whether the stages run as batch jobs (`[executor] kind`, or `--executor`): a stage whose
    /// job is given GPUs is keyed as on a GPU node.
    pub batch: bool,
}

impl<'r> Workspace<'r> {
    pub fn new(config: PipelineConfig, registry: &'r [Box<dyn DynStage>]) -> Result<Self> {
        let present: Vec<(&'static str, Vec<&'static str>)> = config
            .kinds
            .keys()
            .map(|name| (*name, config.wiring.upstream(name)))
            .collect();
        let dag = Dag::new(&present)?;
        let store = Store::new(config.artifacts_dir());
        let batch = config.executor.kind != crate::executor::ExecutorKind::Local
            && !crate::executor::in_job();
        Ok(Self {
            config,
            registry,
            dag,
            store,
            batch,
        })
    }

    /// Whether `stage` runs as a batch job given GPUs.
    fn on_job_gpus(&self, stage: &str) -> bool {
        let resources = self
            .config
            .resources
            .get(stage)
            .cloned()
            .unwrap_or_default();
        self.batch && resources.over(&self.config.executor.slurm).gpu_count() > 0
    }

    /// The stage kind of the instance `name`.
    pub fn stage(&self, name: &str) -> &dyn DynStage {
        let kind = self.kind(name);
        self.registry
            .iter()
            .find(|s| s.name() == kind)
            .map(|b| b.as_ref())
            .expect("instance kinds come from the registry")
    }

    /// The kind of the instance `name`.
    pub fn kind(&self, name: &str) -> &'static str {
        self.config
            .kinds
            .get(name)
            .copied()
            .expect("dag nodes are the config's instances")
    }

    /// The upstream keys of `stage` as its key records them: labelled by kind, so that a
    /// key never depends on a table name (see [`crate::wiring::Wiring::labels`]).
    fn upstream_keys(
        &self,
        stage: &str,
        keys: &BTreeMap<&str, String>,
    ) -> BTreeMap<String, String> {
        self.config
            .wiring
            .labels(stage, |n| self.kind(n))
            .into_iter()
            .map(|(label, name)| (label, keys[name].clone()))
            .collect()
    }

    /// What the running instance `stage` reads: each input key with its chains of artifacts.
    fn input_dirs(&self, stage: &str, dirs: &BTreeMap<&str, PathBuf>) -> Vec<InputDirs> {
        let wires = self.config.wiring.wires.get(stage).into_iter().flatten();
        wires
            .map(|wire| InputDirs {
                key: wire.key.to_string(),
                chains: wire
                    .chains
                    .iter()
                    .map(|chain| {
                        chain
                            .iter()
                            .map(|n| Link::new(n, self.kind(n), &dirs[n]))
                            .collect()
                    })
                    .collect(),
            })
            .collect()
    }

    fn input_digests(
        &self,
        stage: &str,
        digests: &mut DigestCache,
    ) -> Result<BTreeMap<String, String>> {
        let cfg = &self.config.stages[stage];
        let mut out = BTreeMap::new();
        for rel in &cfg.external_inputs {
            let path = self.config.root.join(rel);
            let digest = digests.digest(&path).map_err(|e| match e {
                PipeError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    PipeError::Config(format!(
                        "stage `{stage}` reads {}, which does not exist ({}); fix the path in [{stage}] of {}",
                        rel.display(),
                        path.display(),
                        self.config.path.display()
                    ))
                }
                other => other,
            })?;
            out.insert(rel.to_string_lossy().into_owned(), digest);
        }
        for rel in &cfg.optional_inputs {
            if let Some(digest) = digests.digest_if_file(&self.config.root.join(rel))? {
                out.insert(rel.to_string_lossy().into_owned(), digest);
            }
        }
        Ok(out)
    }

    fn key_inputs(
        &self,
        stage: &str,
        upstream: BTreeMap<String, String>,
        digests: &mut DigestCache,
    ) -> Result<KeyInputs> {
        let s = self.stage(stage);
        Ok(KeyInputs {
            cache_format: CACHE_FORMAT,
            // The kind, not the table name: renaming a table changes no key.
            stage: s.name().to_string(),
            version: s.version(),
            seed: self.config.project.seed,
            config: self.config.stages[stage].canonical.clone(),
            upstream,
            inputs: self.input_digests(stage, digests)?,
            environment: match self.on_job_gpus(stage) {
                true => self.config.stages[stage].environment_on_gpus.clone(),
                false => self.config.stages[stage].environment.clone(),
            },
            reads: self.config.wiring.reads(stage, |n| self.kind(n)),
        })
    }
}

/// What the user asked `pipe run` for.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub from: Option<String>,
    pub to: Option<String>,
    pub only: Option<String>,
    pub force: bool,
    pub dry_run: bool,
}

/// What happens to one stage.
#[derive(Debug, Clone)]
pub enum Action {
    /// Its artifact for the current key exists.
    Cached(Entry),
    /// An unselected ancestor: its latest artifact is used even if stale.
    Reuse {
        entry: Entry,
        stale: Vec<Reason>,
    },
    Run(Why),
    /// It had to run, but the shared cache had its artifact: downloaded, verified, committed
    /// (announced when it was pulled).
    Pulled(Entry),
}

/// One stage of a plan.
#[derive(Debug, Clone)]
pub struct Step {
    pub stage: &'static str,
    pub inputs: KeyInputs,
    pub key: String,
    pub action: Action,
}

/// The stages involved in a run, in topological order.
#[derive(Debug, Clone)]
pub struct Plan {
    pub steps: Vec<Step>,
}

/// The stages a run selects and the ancestors it only reads.
struct Selection {
    run: BTreeSet<&'static str>,
    read_only: BTreeSet<&'static str>,
    /// Set when every selected stage re-runs regardless of its cache (`--force`, `--from`).
    forced: Option<Why>,
}

fn select(dag: &Dag, opts: &RunOptions) -> Result<Selection> {
    let all: BTreeSet<&'static str> = dag.order().iter().copied().collect();
    let from = opts
        .from
        .as_deref()
        .map(|s| dag.resolve(s, "--from"))
        .transpose()?;
    let to = opts
        .to
        .as_deref()
        .map(|s| dag.resolve(s, "--to"))
        .transpose()?;
    let only = opts
        .only
        .as_deref()
        .map(|s| dag.resolve(s, "--only"))
        .transpose()?;
    if only.is_some() && (from.is_some() || to.is_some()) {
        return Err(PipeError::Usage(
            "--only cannot be combined with --from or --to".into(),
        ));
    }
    let mut run = all.clone();
    if let Some(f) = from {
        run = dag.descendants(f);
    }
    if let Some(t) = to {
        run = run.intersection(&dag.ancestors(t)).copied().collect();
    }
    if let Some(o) = only {
        run = BTreeSet::from([o]);
    }
    let needed: BTreeSet<&'static str> = run.iter().flat_map(|s| dag.ancestors(s)).collect();
    let read_only = needed.difference(&run).copied().collect();
    let forced = match (opts.force, from) {
        (true, _) => Some(Why::Forced),
        (false, Some(f)) => Some(Why::From(f.to_string())),
        (false, None) => None,
    };
    Ok(Selection {
        run,
        read_only,
        forced,
    })
}

/// Computes every involved stage's key and decides what to do with it.
pub fn plan(ws: &Workspace, opts: &RunOptions, digests: &mut DigestCache) -> Result<Plan> {
    let sel = select(&ws.dag, opts)?;
    let mut keys: BTreeMap<&str, String> = BTreeMap::new();
    let mut steps = Vec::new();
    for &stage in ws.dag.order() {
        if !sel.run.contains(stage) && !sel.read_only.contains(stage) {
            continue;
        }
        let upstream = ws.upstream_keys(stage, &keys);
        let inputs = ws.key_inputs(stage, upstream, digests)?;
        let key = inputs.key();
        let action = if sel.read_only.contains(stage) {
            reuse_action(ws, stage, &key, &inputs, opts)?
        } else {
            run_action(ws, stage, &key, &inputs, &sel)
        };
        let effective_key = match &action {
            Action::Reuse { entry, .. } => entry.manifest.key.clone(),
            _ => key.clone(),
        };
        keys.insert(stage, effective_key.clone());
        steps.push(Step {
            stage,
            inputs,
            key: effective_key,
            action,
        });
    }
    Ok(Plan { steps })
}

fn reuse_action(
    ws: &Workspace,
    stage: &str,
    key: &str,
    inputs: &KeyInputs,
    opts: &RunOptions,
) -> Result<Action> {
    if let Some(entry) = ws.store.lookup(stage, key) {
        return Ok(Action::Reuse {
            entry,
            stale: Vec::new(),
        });
    }
    let flag = match (&opts.from, &opts.only) {
        (Some(f), _) => format!("--from {f}"),
        (_, Some(o)) => format!("--only {o}"),
        _ => "this selection".to_string(),
    };
    let entry = ws.store.latest(stage).ok_or_else(|| {
        PipeError::Usage(format!(
            "{flag} reuses the artifacts of `{stage}`, but `{stage}` has never run; run `pipe run --to {stage}` first"
        ))
    })?;
    let stale = explain(inputs, &entry.manifest.inputs);
    Ok(Action::Reuse { entry, stale })
}

fn run_action(
    ws: &Workspace,
    stage: &str,
    key: &str,
    inputs: &KeyInputs,
    sel: &Selection,
) -> Action {
    if let Some(why) = &sel.forced {
        return Action::Run(why.clone());
    }
    if let Some(entry) = ws.store.lookup(stage, key) {
        return Action::Cached(entry);
    }
    Action::Run(why_stale(ws, stage, inputs))
}

/// Why a stage without an artifact for its current key must run, from the same key inputs.
pub fn why_stale(ws: &Workspace, stage: &str, inputs: &KeyInputs) -> Why {
    match ws.store.latest(stage) {
        None => Why::NeverRun,
        Some(prev) => Why::Stale(explain(inputs, &prev.manifest.inputs)),
    }
}

/// How a run ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ran: Vec<String>,
    pub cached: Vec<String>,
    pub reused: Vec<String>,
    pub pulled: Vec<String>,
}

impl Outcome {
    pub fn counts(&self) -> Counts {
        Counts {
            ran: self.ran.len(),
            pulled: self.pulled.len(),
            cached: self.cached.len(),
            reused: self.reused.len(),
        }
    }
}

/// Runs the plan: cached and reused stages are announced, the others run and are committed.
/// Stops at the first failure; what is downstream of it is reported as skipped.
pub fn execute(
    ws: &Workspace,
    plan: &Plan,
    reporter: &dyn Reporter,
    dry_run: bool,
) -> Result<Outcome> {
    let started = Instant::now();
    let mut dirs: BTreeMap<&str, PathBuf> = BTreeMap::new();
    let mut outcome = Outcome::default();
    let mut failure: Option<PipeError> = None;
    for step in &plan.steps {
        if let Some(PipeError::StageFailed { stage, .. }) = &failure {
            reporter.skipped(step.stage, stage);
            continue;
        }
        match &step.action {
            Action::Cached(entry) => {
                reporter.cached(step.stage, &step.key);
                dirs.insert(step.stage, entry.dir.clone());
                outcome.cached.push(step.stage.to_string());
            }
            Action::Reuse { entry, stale } => {
                reporter.reused(step.stage, &step.key, stale);
                dirs.insert(step.stage, entry.dir.clone());
                outcome.reused.push(step.stage.to_string());
            }
            Action::Pulled(entry) => {
                dirs.insert(step.stage, entry.dir.clone());
                outcome.pulled.push(step.stage.to_string());
            }
            Action::Run(why) if dry_run => {
                reporter.would_run(step.stage, &step.key, why);
                outcome.ran.push(step.stage.to_string());
            }
            Action::Run(why) => {
                reporter.started(step.stage, &step.key, why);
                match run_step(ws, step, &dirs, reporter) {
                    Ok((entry, seconds)) => {
                        reporter.finished(step.stage, &step.key, seconds);
                        dirs.insert(step.stage, entry.dir);
                        outcome.ran.push(step.stage.to_string());
                    }
                    Err(e) => {
                        reporter.failed(step.stage, &e.to_string());
                        failure = Some(e);
                    }
                }
            }
        }
    }
    reporter.summary(&outcome.counts(), started.elapsed().as_secs_f64());
    match failure {
        Some(e) => Err(e),
        None => Ok(outcome),
    }
}

fn run_step(
    ws: &Workspace,
    step: &Step,
    dirs: &BTreeMap<&str, PathBuf>,
    reporter: &dyn Reporter,
) -> Result<(Entry, f64)> {
    let stage = ws.stage(step.stage);
    let inputs = ws.input_dirs(step.stage, dirs);
    let scratch = ws.store.scratch()?;
    let partial = ws.store.partial_dir(step.stage, &step.key);
    let started_at_ms = now_ms();
    let clock = Instant::now();
    let mut cx = StageContext::new(
        ws.config.root.clone(),
        scratch.dir().to_path_buf(),
        partial.clone(),
        inputs,
        ws.config.project.seed,
        reporter.progress(),
    );
    let cfg = &ws.config.stages[step.stage];
    let result = catch_unwind(AssertUnwindSafe(|| stage.run(cfg, &mut cx)));
    let fail = |message: String| PipeError::StageFailed {
        stage: step.stage.to_string(),
        message,
    };
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(fail(error_chain(e.as_ref()))),
        Err(panic) => return Err(fail(format!("panicked: {}", panic_message(&panic)))),
    }
    let seconds = clock.elapsed().as_secs_f64();
    let manifest = Manifest {
        stage: step.stage.to_string(),
        key: step.key.clone(),
        pipe_version: env!("CARGO_PKG_VERSION").to_string(),
        started_at_ms,
        finished_at_ms: now_ms(),
        duration_s: seconds,
        inputs: step.inputs.clone(),
        metrics: cx.metrics().clone(),
        outputs: Vec::new(),
    };
    let entry = ws.store.commit(scratch, manifest)?;
    remove_partial(&partial);
    crate::remote::after_commit(ws, &entry, reporter);
    Ok((entry, seconds))
}

/// Checkpoints of a committed key are no longer needed.
fn remove_partial(partial: &Path) {
    if partial.exists() {
        let _ = std::fs::remove_dir_all(partial);
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(&format!(": {text}"));
        }
        source = s.source();
    }
    msg
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}
