//! The `pipe` binary: everything lives in the libraries; this sets the process up for model work
//! and hands the stage and tool registries of pipe-stages to the engine.

fn main() -> std::process::ExitCode {
    pipe_stages::run_process(|| pipe::main_with(pipe_stages::registry(), pipe_stages::tools()))
}
