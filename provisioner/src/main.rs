//! The `provision` binary: parse arguments, run the command, map the outcome to an exit code
//! that scripts can rely on (see `provisioner::cli`).

use std::process::ExitCode;

use clap::Parser;
use provisioner::cli::{self, Cli, EXIT_FAILED, EXIT_INVALID};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_INVALID } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            let (code, message) = cli::exit_code(&failure);
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}
