//! `keyhold::cli`: the operator CLI, shaped like the `vault` CLI (same commands, flags,
//! `VAULT_*` variables, output and exit codes).
//!
//! The path of a command: `argv::preprocess` (Go-style `-flag` to `--flag`) -> clap (`args`)
//! -> a command in `commands` talking to the server through `crate::client` -> `output`.
//! [`exit_code`] is the one place errors become exit codes.

mod args;
mod argv;
mod commands;
mod data;
mod input;
mod output;
mod token_helper;

use std::collections::HashSet;
use std::ffi::OsString;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use crate::client::{CaCert, Client, ClientConfig, ClientError};

pub use args::{Cli, Command, GlobalArgs};
pub use output::{Format, Ui};

/// Why a command failed. Each kind has one exit code, given by [`exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad flags or arguments.
    #[error("{0}")]
    Usage(String),
    /// Something local went wrong: a missing file, a value that fails validation.
    #[error("{0}")]
    Local(String),
    /// The server (or the way to it) failed; `context` says what was being done.
    #[error("{context}: {source}")]
    Api {
        context: String,
        #[source]
        source: Box<ClientError>,
    },
    /// The server answered, but not with what the command needed.
    #[error("{0}")]
    Remote(String),
    /// A command or flag of the `vault` CLI that keyhold does not implement yet.
    #[error("{0}")]
    NotSupported(String),
    /// Clap's own parse error (already formatted with usage).
    #[error("{0}")]
    Clap(#[from] clap::Error),
}

impl CliError {
    pub fn api(context: impl Into<String>, source: ClientError) -> Self {
        CliError::Api {
            context: context.into(),
            source: Box::new(source),
        }
    }
}

/// The exit code of a failed command, as vault uses them: 1 for local and usage errors, 2 for
/// errors from the server or the connection to it.
pub fn exit_code(err: &CliError) -> u8 {
    match err {
        CliError::Usage(_) | CliError::Local(_) | CliError::NotSupported(_) => 1,
        CliError::Clap(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
            _ => 1,
        },
        CliError::Api { .. } | CliError::Remote(_) => 2,
    }
}

/// Runs the CLI with `args` (including the program name) and returns its exit code.
pub fn run(args: Vec<OsString>) -> ExitCode {
    let cli = match parse(args) {
        Ok(cli) => cli,
        Err(err) => return ExitCode::from(report(&err)),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return ExitCode::from(report(&CliError::Local(format!(
                "Error starting the async runtime: {e}"
            ))))
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => ExitCode::from(report(&err)),
    }
}

/// Prints `err` on stderr and returns its exit code.
fn report(err: &CliError) -> u8 {
    match err {
        CliError::Clap(e) => {
            let _ = e.print();
        }
        other => eprintln!("{other}"),
    }
    exit_code(err)
}

/// Preprocesses argv and parses it with clap.
pub fn parse(args: Vec<OsString>) -> Result<Cli, CliError> {
    let mut args = args.into_iter();
    let program = args.next().unwrap_or_else(|| "keyhold".into());
    let command = Cli::command();
    let bools = bool_flags(&command);
    let mut argv = vec![program];
    let args = argv::preprocess(args.collect(), &bools);
    argv.extend(argv::dashless_flags(
        args,
        &SET_CONFIG,
        &long_flags(&command, &SET_CONFIG),
        &bools,
    ));
    let matches = command.try_get_matches_from(argv)?;
    Ok(Cli::from_arg_matches(&matches)?)
}

/// The command whose flags may be written without a dash (see `argv::dashless_flags`).
const SET_CONFIG: [&str; 4] = ["operator", "raft", "autopilot", "set-config"];

/// The long names of the flags of the subcommand at `path`.
fn long_flags(cmd: &clap::Command, path: &[&str]) -> HashSet<String> {
    let mut cmd = cmd;
    for name in path {
        match cmd.find_subcommand(name) {
            Some(sub) => cmd = sub,
            None => return HashSet::new(),
        }
    }
    cmd.get_arguments()
        .filter(|a| !a.is_global_set())
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect()
}

/// The long names of every switch (flag without a value) in the command tree.
fn bool_flags(cmd: &clap::Command) -> HashSet<String> {
    let mut names = HashSet::new();
    let mut stack = vec![cmd];
    while let Some(cmd) = stack.pop() {
        for arg in cmd.get_arguments() {
            if matches!(arg.get_action(), clap::ArgAction::SetTrue) {
                names.extend(arg.get_long().map(str::to_string));
                names.extend(
                    arg.get_all_aliases()
                        .unwrap_or_default()
                        .into_iter()
                        .map(str::to_string),
                );
            }
        }
        stack.extend(cmd.get_subcommands());
    }
    names
}

/// Runs a parsed command against stdio; `Ok` holds the exit code (0, or 2 for a sealed
/// `status`).
pub async fn execute(cli: Cli) -> Result<u8, CliError> {
    let format = match &cli.global.format {
        Some(f) => f.clone(),
        None => std::env::var("VAULT_FORMAT").unwrap_or_default(),
    };
    let mut ui = Ui::stdio(Format::parse(&format)?, cli.global.field.clone());
    let ctx = Context { global: cli.global };
    commands::dispatch(&ctx, &mut ui, cli.command).await
}

/// What every command may need besides its own arguments.
pub struct Context {
    pub global: GlobalArgs,
}

impl Context {
    /// The client config: `VAULT_*` variables, overridden by global flags.
    pub fn client_config(&self) -> Result<ClientConfig, CliError> {
        let mut config = ClientConfig::from_env().map_err(|e| CliError::Usage(e.to_string()))?;
        let g = &self.global;
        if let Some(a) = &g.address {
            config.address = a.clone();
        }
        if let Some(c) = &g.ca_cert {
            config.ca_cert = Some(CaCert::File(c.clone()));
        } else if let Some(c) = &g.ca_path {
            config.ca_cert = Some(CaCert::Dir(c.clone()));
        }
        if let Some(c) = &g.client_cert {
            config.client_cert = Some(c.clone());
        }
        if let Some(k) = &g.client_key {
            config.client_key = Some(k.clone());
        }
        if g.tls_skip_verify {
            config.skip_verify = true;
        }
        if let Some(n) = &g.tls_server_name {
            config.tls_server_name = Some(n.clone());
        }
        if let Some(ns) = &g.namespace {
            config.namespace = Some(ns.clone());
        }
        Ok(config)
    }

    pub fn client(&self) -> Result<Client, CliError> {
        let config = self.client_config()?;
        Client::new(&config).map_err(|e| CliError::Local(e.to_string()))
    }
}

#[cfg(test)]
mod raft_tests;
#[cfg(test)]
mod tests;
