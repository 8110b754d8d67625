//! Carries out the commands: loads the workspace, takes the lock where needed, and maps
//! errors to exit codes (0 ok, 1 failure, 2 usage or config error).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory, FromArgMatches};
use pipe_stages::{DynStage, Tool};

use crate::cli::{CacheArgs, Cli, Command, DagArgs, Globals, InitArgs, RunArgs};
use crate::config::{Override, PipelineConfig};
use crate::digest::DigestCache;
use crate::error::{PipeError, Result};
use crate::executor::{self, ExecutorKind, JobInvocation};
use crate::lock::WorkspaceLock;
use crate::runner::{plan, RunOptions, Workspace};
use crate::tool_host::{tool_error, Host};
use crate::ui::{TerminalUi, Verbosity};
use crate::{compare, gc, show, status, sweep, verify};

/// Parses the command line and runs it against `registry` and `tools`; the binary's whole
/// `main` (inside whatever process setup the binary does first).
pub fn main_with(registry: Vec<Box<dyn DynStage>>, tools: Vec<Box<dyn Tool>>) -> ExitCode {
    quiet_on_broken_stdout();
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
        Err(panic) if is_broken_stdout(panic.as_ref()) => ExitCode::from(BROKEN_PIPE),
        Err(panic) => {
            eprintln!("error: {}", internal_error(&panic));
            ExitCode::from(INTERNAL_ERROR)
        }
    }
}

/// The exit code of a process whose reader went away (128 + SIGPIPE), as the shell reports it.
const BROKEN_PIPE: u8 = 141;

/// `pipe status | head` closes stdout early, and the next `println!` panics with EPIPE: Rust
/// ignores SIGPIPE so that a child process that dies fails a write softly (the command scorer
/// relies on that), instead of killing pipe. A reader that stopped reading is not a bug: no
/// panic message, and the code a killed-by-SIGPIPE tool would give.
fn quiet_on_broken_stdout() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !is_broken_stdout(info.payload()) {
                default(info)
            }
        }));
    });
}

/// Whether a panic is `println!`'s on a closed stdout.
fn is_broken_stdout(payload: &(dyn std::any::Any + Send)) -> bool {
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("");
    message.starts_with("failed printing to stdout") && message.contains("Broken pipe")
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
    let ui = TerminalUi::new(verbosity(globals));
    // A sweep loads one config per variant.
    if let Command::Run(args @ RunArgs { sweep: true, .. }) = &cli.command {
        return sweep::run(globals, args, registry, &ui);
    }
    let overrides = globals
        .set
        .iter()
        .map(|raw| Override::parse(raw))
        .collect::<Result<Vec<_>>>()?;
    let config = PipelineConfig::load(&globals.config, &overrides, registry)?;
    let mut ws = Workspace::new(config, registry)?;
    if let Command::Run(args) = &cli.command {
        ws.batch = executor::kind(&ws, args.executor.as_deref())? != ExecutorKind::Local;
    }
    match &cli.command {
        Command::Run(args) => run(&ws, args, &ui, globals),
        Command::Push(args) => push_or_pull(&ws, args, false),
        Command::Pull(args) => push_or_pull(&ws, args, true),
        Command::Status(args) => status::print(&ws, args.verify),
        Command::Verify => verify::verify_store(&ws),
        Command::Show(args) => show::print(&ws, args),
        Command::Dag(args) => dag(&ws, args),
        Command::Gc(args) => gc::collect(&ws, args),
        Command::Compare(args) => compare::print(&ws, args),
        Command::Init(_) => unreachable!("handled above"),
    }
}

fn run(ws: &Workspace, args: &RunArgs, ui: &TerminalUi, globals: &Globals) -> Result<()> {
    let opts = args.options();
    let lock = if args.dry_run {
        None
    } else {
        Some(executor::lock_for_run(ws)?)
    };
    let mut digests = DigestCache::load(ws.store.digest_cache_path());
    let mut plan = plan(ws, &opts, &mut digests)?;
    // Jobs sharing a lent lock leave the digest cache to the run that holds it.
    if !lock.as_ref().is_some_and(|l| l.is_lent()) {
        digests.save()?;
    }
    verify::check_reads(ws, &mut plan, !args.dry_run)?;
    executor::check_job_plan(&plan)?;
    if !args.dry_run {
        crate::remote::pull_stale(ws, &mut plan, ui);
    }
    let invocation = invocation(ws, globals);
    let executor = executor::choose(ws, args.executor.as_deref(), &invocation, lock.as_ref())?;
    executor.execute(ws, &plan, ui, args.dry_run).map(|_| ())
}

/// How a batch job re-creates this run's view of the workspace.
pub(crate) fn invocation(ws: &Workspace, globals: &Globals) -> JobInvocation {
    JobInvocation {
        config: std::path::absolute(&ws.config.path).unwrap_or_else(|_| ws.config.path.clone()),
        overrides: globals.set.clone(),
        program: std::env::current_exe().unwrap_or_else(|_| "pipe".into()),
    }
}

/// `pipe push` / `pipe pull`: the current artifacts, to or from the shared cache.
fn push_or_pull(ws: &Workspace, args: &CacheArgs, pull: bool) -> Result<()> {
    let _lock = if pull {
        let lock = WorkspaceLock::acquire(ws.store.root())?;
        ws.store.clean_scratch()?;
        Some(lock)
    } else {
        None
    };
    let mut digests = DigestCache::load(ws.store.digest_cache_path());
    let plan = plan(ws, &RunOptions::default(), &mut digests)?;
    if pull {
        crate::remote::pull_command(ws, &plan, &args.stages)
    } else {
        crate::remote::push_command(ws, &plan, &args.stages)
    }
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
