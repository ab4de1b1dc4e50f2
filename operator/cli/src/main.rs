//! `kubectl switchboard`: the kubectl plugin for Switchboard. kubectl runs any `kubectl-<name>`
//! binary on PATH as `kubectl <name>`.
//!
//! Each subcommand lives in its own module with its clap `Args` and a `run` that writes to the
//! given output; `main` only parses and dispatches. Cluster commands (status, promote, abort,
//! rollback, render) slot in as further [`Command`] variants.
#![forbid(unsafe_code)]

mod output;
mod plan;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::output::OutputFormat;

/// Manage Switchboard rollouts and experiments.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-switchboard",
    bin_name = "kubectl switchboard",
    version
)]
struct Cli {
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sample size per variant and time to reach it, for an experiment's minimum detectable effect.
    Plan(plan::PlanArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = match &cli.command {
        Command::Plan(args) => plan::run(args, cli.output, &mut out),
    };
    match result.and_then(|()| out.flush().map_err(Into::into)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
