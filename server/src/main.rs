//! The `keyhold` binary: the server and its operator CLI.

fn main() -> std::process::ExitCode {
    keyhold::cli::run(std::env::args_os().collect())
}
