//! Carries out the commands: loads the workspace, takes the lock where needed, and maps
//! errors to exit codes (0 ok, 1 failure, 2 usage or config error).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory, FromArgMatches};
use pipe_stages::{DynStage, Tool};

use crate::cli::{Cli, Command, DagArgs, Globals, InitArgs, RunArgs};
use crate::config::{Override, PipelineConfig};
use crate::digest::DigestCache;
use crate::error::{PipeError, Result};
use crate::lock::WorkspaceLock;
use crate::runner::{execute, plan, RunOptions, Workspace};
use crate::tool_host::{tool_error, Host};
use crate::ui::{TerminalUi, Verbosity};
use crate::{gc, show, status, verify};

/// Parses the command line and runs it against `registry` and `tools`; the binary's whole
/// `main` (inside whatever process setup the binary does first).
pub fn main_with(registry: Vec<Box<dyn DynStage>>, tools: Vec<Box<dyn Tool>>) -> ExitCode {
    let invocation = match parse(std::env::args_os(), &tools) {
        Ok(invocation) => invocation,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match catch_unwind(AssertUnwindSafe(|| dispatch(&invocation, &registry, true))) {
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
pub fn run_args<I, T>(
    args: I,
    registry: &[Box<dyn DynStage>],
    tools: &[Box<dyn Tool>],
) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let invocation = parse(args, tools).map_err(|e| PipeError::Usage(e.to_string()))?;
    dispatch(&invocation, registry, false)
}

/// A parsed command line: an engine command, or a registered tool's with its arguments.
enum Invocation<'t> {
    Engine(Cli),
    Tool {
        globals: Globals,
        tool: &'t dyn Tool,
        args: ArgMatches,
    },
}

/// Parses the engine's commands and every tool's subcommand in one clap command, so help,
/// errors and the global options cover them all.
fn parse<'t, I, T>(
    args: I,
    tools: &'t [Box<dyn Tool>],
) -> std::result::Result<Invocation<'t>, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let command = Cli::command().subcommands(tools.iter().map(|t| t.command()));
    let matches = command.try_get_matches_from(args)?;
    let tool = matches.subcommand().and_then(|(name, args)| {
        let tool = tools.iter().find(|t| t.command().get_name() == name)?;
        Some((tool.as_ref(), args.clone()))
    });
    Ok(match tool {
        Some((tool, args)) => Invocation::Tool {
            globals: Globals::from_arg_matches(&matches)?,
            tool,
            args,
        },
        None => Invocation::Engine(Cli::from_arg_matches(&matches)?),
    })
}

fn verbosity(globals: &Globals) -> Verbosity {
    match (globals.quiet, globals.verbose) {
        (true, _) => Verbosity::Quiet,
        (_, true) => Verbosity::Verbose,
        _ => Verbosity::Normal,
    }
}

/// `own_argv`: the command line is this process's own.
fn dispatch(
    invocation: &Invocation<'_>,
    registry: &[Box<dyn DynStage>],
    own_argv: bool,
) -> Result<()> {
    let cli = match invocation {
        Invocation::Tool {
            globals,
            tool,
            args,
        } => {
            let host = Host::new(globals, registry, own_argv);
            return tool.run(args, &host).map_err(tool_error);
        }
        Invocation::Engine(cli) => cli,
    };
    let globals = &cli.globals;
    // `init` runs without a pipeline.toml.
    if let Command::Init(args) = &cli.command {
        return init(globals, args, registry);
    }
    let overrides = globals
        .set
        .iter()
        .map(|raw| Override::parse(raw))
        .collect::<Result<Vec<_>>>()?;
    let config = PipelineConfig::load(&globals.config, &overrides, registry)?;
    let ws = Workspace::new(config, registry)?;
    let ui = TerminalUi::new(verbosity(globals));
    match &cli.command {
        Command::Run(args) => run(&ws, args, &ui),
        Command::Status(args) => status::print(&ws, args.verify),
        Command::Verify => verify::verify_store(&ws),
        Command::Show(args) => show::print(&ws, args),
        Command::Dag(args) => dag(&ws, args),
        Command::Gc(args) => gc::collect(&ws, args),
        Command::Init(_) => unreachable!("handled above"),
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
            // An instance not named after its kind says which kind it is.
            let kind = ws.kind(name);
            let label = if kind == name {
                name.to_string()
            } else {
                format!("{name} ({kind})")
            };
            println!("{label:<10} {about}{arrow}");
        }
    }
    Ok(())
}

fn init(globals: &Globals, args: &InitArgs, registry: &[Box<dyn DynStage>]) -> Result<()> {
    let path = &globals.config;
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
