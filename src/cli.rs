//! The command line, as clap derives only; `app.rs` carries the commands out. The tools
//! pipe-stages registers (`generate`, `chat`, `bench`) add their own subcommands to it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Fine-tune small LLMs as a DAG of content-hashed, cached stages.
#[derive(Debug, Parser)]
#[command(name = "pipe", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub globals: Globals,
    #[command(subcommand)]
    pub command: Command,
}

/// The options every command takes, before or after its name.
#[derive(Debug, Args)]
pub struct Globals {
    /// The pipeline file; its directory is the workspace root.
    #[arg(
        long,
        global = true,
        default_value = "pipeline.toml",
        value_name = "FILE"
    )]
    pub config: PathBuf,
    /// Override a config key, checked like the file (repeatable): -s ingest.val_fraction=0.1
    #[arg(short = 's', long = "set", global = true, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Only errors and what was asked for.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More detail.
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every stage whose inputs changed; skip the rest.
    Run(RunArgs),
    /// Every stage: cached, stale (and why), corrupt, or never run.
    Status(StatusArgs),
    /// Re-hash every artifact in the store and compare it with its manifest; mark the corrupt.
    Verify,
    /// A stage's artifact: manifest, metrics, files and sample rows.
    Show(ShowArgs),
    /// The stage graph.
    Dag(DagArgs),
    /// Delete old artifacts and checkpoints (lists them and asks first).
    Gc(GcArgs),
    /// A table of every cached artifact of a stage: the params that differ, the metrics.
    Compare(CompareArgs),
    /// Write a commented starter pipeline.toml.
    Init(InitArgs),
    /// Upload the current artifacts of these stages (default: all) to the shared cache.
    Push(CacheArgs),
    /// Download the current artifacts of these stages (default: all) from the shared cache.
    Pull(CacheArgs),
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    /// Stage names; none means every stage of the pipeline.
    #[arg(value_name = "NAME")]
    pub stages: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Re-run this stage and everything downstream; reuse the latest artifacts above it.
    #[arg(long, value_name = "STAGE")]
    pub from: Option<String>,
    /// Stop after this stage (runs only it and what it needs).
    #[arg(long, value_name = "STAGE")]
    pub to: Option<String>,
    /// Run just this stage, reading its upstreams' latest artifacts.
    #[arg(long, value_name = "STAGE")]
    pub only: Option<String>,
    /// Re-run the selected stages even if cached.
    #[arg(long)]
    pub force: bool,
    /// Show what would run, and why, without running anything.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Run every combination of comma-separated `-s` values (`-s orpo.beta=0.1,0.2`), one
    /// variant after another; stages whose keys the variants share are built once.
    #[arg(long)]
    pub sweep: bool,
    /// Where stages run: `local` (this process) or `slurm` (one batch job per stage);
    /// default: `[executor] kind`, else local.
    #[arg(long, value_name = "KIND")]
    pub executor: Option<String>,
}

impl RunArgs {
    /// What the runner plans and runs by: the selection and the flags.
    pub fn options(&self) -> crate::runner::RunOptions {
        crate::runner::RunOptions {
            from: self.from.clone(),
            to: self.to.clone(),
            only: self.only.clone(),
            force: self.force,
            dry_run: self.dry_run,
        }
    }
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The stage to show.
    pub stage: String,
    /// An artifact key (or a unique prefix); default: the current key if cached, else the latest.
    #[arg(long)]
    pub key: Option<String>,
    /// Print the manifest as JSON only.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DagArgs {
    /// Graphviz dot output.
    #[arg(long, conflicts_with = "mermaid")]
    pub dot: bool,
    /// Mermaid flowchart output.
    #[arg(long)]
    pub mermaid: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Also re-hash the outputs of every cached stage and compare them with their manifests.
    #[arg(long)]
    pub verify: bool,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Keep this many of the most recent artifacts of each stage, besides the current ones
    /// and what they were made from.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub keep: usize,
    /// Keep only the current artifacts (and what they were made from); also delete
    /// checkpoints younger than a day.
    #[arg(long, conflicts_with = "keep")]
    pub all: bool,
    /// Delete without asking (needed when there is no terminal to ask on).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Only list what would be deleted.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The stage whose artifacts to compare.
    #[arg(default_value = "eval")]
    pub stage: String,
    /// Order the rows by this metric (highest first; `--asc` for lowest first). The rows of
    /// the latest sweep stay first.
    #[arg(long, value_name = "METRIC")]
    pub sort: Option<String>,
    /// With --sort: lowest first.
    #[arg(long, requires = "sort")]
    pub asc: bool,
    /// Print the comparison as JSON.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print the comparison as CSV.
    #[arg(long)]
    pub csv: bool,
    /// Also write one HTML page: the table, the training curves overlaid, each artifact's view.
    #[arg(long, value_name = "FILE")]
    pub html: Option<std::path::PathBuf>,
}
