//! Carries out the commands: loads the workspace, takes the lock where needed, and maps
//! errors to exit codes (0 ok, 1 failure, 2 usage or config error).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;

use clap::Parser;
use pipe_stages::DynStage;

use crate::cli::{Cli, Command, DagArgs, InitArgs, RunArgs};
use crate::config::{Override, PipelineConfig};
use crate::digest::DigestCache;
use crate::error::{PipeError, Result};
use crate::lock::WorkspaceLock;
use crate::runner::{execute, plan, RunOptions, Workspace};
use crate::ui::{TerminalUi, Verbosity};
use crate::{gc, model_commands, show, status, verify};

/// Parses the command line and runs it against `registry`; the binary's whole `main`.
pub fn main_with(registry: Vec<Box<dyn DynStage>>) -> ExitCode {
    pipe_stages::llm::runtime::configure_process();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let outcome = pipe_stages::llm::runtime::on_pool(|| {
        catch_unwind(AssertUnwindSafe(|| dispatch(&cli, &registry, true)))
    });
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
        Err(panic) => {
            eprintln!("error: {}", internal_error(&panic));
            ExitCode::from(INTERNAL_ERROR)
        }
    }
}

/// The exit code of a panic that reached the command line (a bug): as a failed stage's.
const INTERNAL_ERROR: u8 = 1;

/// What a panic that escaped a command says: a bug, with the command line to reproduce it.
fn internal_error(panic: &Box<dyn std::any::Any + Send>) -> String {
    let message = crate::runner::panic_message(panic);
    let argv: Vec<String> = std::env::args().collect();
    format!(
        "internal error (a bug in pipe): {message}\n  command line: {}\n  please report it with \
         the command line and the input that caused it",
        argv.join(" ")
    )
}

/// Runs one command line in-process (benchmarks, embedding); `args[0]` is the program name.
pub fn run_args<I, T>(args: I, registry: &[Box<dyn DynStage>]) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::try_parse_from(args).map_err(|e| PipeError::Usage(e.to_string()))?;
    dispatch(&cli, registry, false)
}

fn verbosity(cli: &Cli) -> Verbosity {
    match (cli.quiet, cli.verbose) {
        (true, _) => Verbosity::Quiet,
        (_, true) => Verbosity::Verbose,
        _ => Verbosity::Normal,
    }
}

/// `own_argv`: `cli` was parsed from this process's own command line.
fn dispatch(cli: &Cli, registry: &[Box<dyn DynStage>], own_argv: bool) -> Result<()> {
    // Commands that may run without a pipeline.toml.
    match &cli.command {
        Command::Init(args) => return init(cli, args, registry),
        Command::Generate(args) => return model_commands::generate(cli, args, registry),
        Command::Chat(args) => return model_commands::chat(cli, args, registry),
        Command::Bench(args) => return model_commands::bench(cli, args, registry, own_argv),
        _ => {}
    }
    let overrides = cli
        .set
        .iter()
        .map(|raw| Override::parse(raw))
        .collect::<Result<Vec<_>>>()?;
    let config = PipelineConfig::load(&cli.config, &overrides, registry)?;
    let ws = Workspace::new(config, registry)?;
    let ui = TerminalUi::new(verbosity(cli));
    match &cli.command {
        Command::Run(args) => run(&ws, args, &ui),
        Command::Status(args) => status::print(&ws, args.verify),
        Command::Verify => verify::verify_store(&ws),
        Command::Show(args) => show::print(&ws, args),
        Command::Dag(args) => dag(&ws, args),
        Command::Gc(args) => gc::collect(&ws, args),
        Command::Init(_) | Command::Generate(_) | Command::Chat(_) | Command::Bench(_) => {
            unreachable!("handled above")
        }
    }
}

fn run(ws: &Workspace, args: &RunArgs, ui: &TerminalUi) -> Result<()> {
    let opts = RunOptions {
        from: args.from.clone(),
        to: args.to.clone(),
        only: args.only.clone(),
        force: args.force,
        dry_run: args.dry_run,
    };
    let _lock = if args.dry_run {
        None
    } else {
        let lock = WorkspaceLock::acquire(ws.store.root())?;
        ws.store.clean_scratch()?;
        Some(lock)
    };
    let mut digests = DigestCache::load(ws.store.digest_cache_path());
    let mut plan = plan(ws, &opts, &mut digests)?;
    digests.save()?;
    verify::check_reads(ws, &mut plan, !args.dry_run)?;
    execute(ws, &plan, ui, args.dry_run).map(|_| ())
}

fn dag(ws: &Workspace, args: &DagArgs) -> Result<()> {
    if args.dot {
        print!("{}", ws.dag.to_dot());
    } else if args.mermaid {
        print!("{}", ws.dag.to_mermaid());
    } else {
        for &name in ws.dag.order() {
            let deps = ws.dag.deps(name);
            let about = ws.stage(name).about();
            let arrow = if deps.is_empty() {
                String::new()
            } else {
                format!(" <- {}", deps.join(", "))
            };
            println!("{name:<10} {about}{arrow}");
        }
    }
    Ok(())
}

fn init(cli: &Cli, args: &InitArgs, registry: &[Box<dyn DynStage>]) -> Result<()> {
    let path = &cli.config;
    if path.exists() && !args.force {
        return Err(PipeError::Usage(format!(
            "{} already exists; pass --force to overwrite it",
            path.display()
        )));
    }
    std::fs::write(path, starter(registry)).map_err(|e| PipeError::io(path, e))?;
    println!(
        "wrote {}: edit the paths and columns, then `pipe run`",
        path.display()
    );
    Ok(())
}

/// The starter pipeline: `[project]` and every stage's documented table.
pub fn starter(registry: &[Box<dyn DynStage>]) -> String {
    let mut s = String::from(
        "# pipe pipeline: one table per stage. Every key is optional unless marked required;\n\
         # the values shown are the defaults. `pipe run -s table.key=value` overrides any key.\n\n\
         [project]\n\
         name = \"my-finetune\"\n\
         # artifacts = \"artifacts\"   # the cache directory (git-ignore it)\n\
         # seed = 42                  # seeds every stage; part of every cache key\n",
    );
    for stage in registry {
        s.push('\n');
        s.push_str(stage.starter().trim_end());
        s.push('\n');
    }
    s
}
