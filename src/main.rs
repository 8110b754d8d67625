//! The `pipe` binary: everything lives in the library; this only hands over the stage registry.

fn main() -> std::process::ExitCode {
    pipe::main_with(pipe_stages::registry())
}
