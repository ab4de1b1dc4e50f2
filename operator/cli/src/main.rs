//! `kubectl switchboard`: the kubectl plugin for Switchboard. kubectl runs any `kubectl-<name>`
//! binary on PATH as `kubectl <name>`.
//!
//! Each subcommand lives in its own module with its clap `Args` and a `run` that writes to the
//! given output; `main` only parses and dispatches. `plan` and `render` work offline; `status`,
//! `promote`, `abort` and `rollback` talk to the cluster of the current kubeconfig context.
#![forbid(unsafe_code)]

mod actions;
mod cluster;
mod output;
mod plan;
mod render;
mod status;

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
    /// Rollouts (phase, stable, candidate, weight, last analysis) and experiments (samples, ETA,
    /// estimates).
    Status(status::StatusArgs),
    /// Promote an AdapterPatch's candidate now, skipping the remaining canary steps.
    Promote(actions::TargetArgs),
    /// Abort an AdapterPatch's rollout: the stable version serves all traffic again.
    Abort(actions::TargetArgs),
    /// Make an earlier version of an AdapterPatch stable again.
    Rollback(actions::RollbackArgs),
    /// Sample size per variant and time to reach it, for an experiment's minimum detectable effect.
    Plan(plan::PlanArgs),
    /// The RuntimeConfig JSON the operator would write for a Router, compiled locally from
    /// manifests (no cluster needed).
    Render(render::RenderArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let format = cli.output;
    let cluster = |future: std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + '_>>| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(future))
    };
    let result = match &cli.command {
        Command::Plan(args) => plan::run(args, format, &mut out),
        Command::Render(args) => render::run(args, format, &mut out),
        Command::Status(args) => cluster(Box::pin(status::run(args, format, &mut out))),
        Command::Promote(args) => cluster(Box::pin(actions::run_target(
            args,
            actions::Action::Promote,
            format,
            &mut out,
        ))),
        Command::Abort(args) => cluster(Box::pin(actions::run_target(
            args,
            actions::Action::Abort,
            format,
            &mut out,
        ))),
        Command::Rollback(args) => cluster(Box::pin(actions::run_rollback(args, format, &mut out))),
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
