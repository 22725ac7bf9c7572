//! mxguard: do I need a backup MX, and is the one I have helping or hurting?
//!
//! This binary parses the command line, validates it into a configuration,
//! runs the command, and maps the outcome onto the exit-code contract
//! (DESIGN §3): 0 clean, 1 findings at warning or above, 2 the check could
//! not run. A closed output pipe exits 0.

mod check;
mod cli;
mod demo;
mod drill;
mod output;
mod queue;
mod relay;
mod render;
mod simulate;
mod web;

use std::process::ExitCode;

use clap::Parser;

/// The exit statuses of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// No finding at warning or above.
    Clean = 0,
    /// At least one warning or critical finding.
    Findings = 1,
    /// The check itself could not run.
    Error = 2,
}

/// Why a command stopped early.
#[derive(Debug)]
pub enum Failure {
    /// Bad input or an unusable environment; the message says which.
    Usage(String),
    /// Writing the output failed.
    Io(std::io::Error),
    /// A bug or an impossible state.
    Internal(String),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Io(e)
    }
}

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors.
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // The relay is a service: its mail events (info) are its log. The
    // other commands only say something when it goes wrong.
    let (default_filter, json) = match &cli.command {
        cli::Command::Relay(a) => ("info", a.log_format == cli::LogFormat::Json),
        _ => ("warn", false),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MXGUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let logger = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        logger.json().flatten_event(true).init();
    } else {
        logger.init();
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            cli::Command::Check(args) => {
                let cfg = args
                    .into_config()
                    .map_err(|e| Failure::Usage(format!("{e:#}")))?;
                check::run(cfg).await
            }
            cli::Command::Demo(args) => demo::run(args).await,
            cli::Command::Relay(args) => relay::run(args).await,
            cli::Command::Queue(args) => queue::run(args).await,
            cli::Command::Simulate(args) => simulate::run(args),
            cli::Command::Web(args) => web::run(args).await,
        }
    });
    match result {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(Failure::Io(e)) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(Failure::Io(e)) => {
            eprintln!("error: writing output: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Usage(msg)) | Err(Failure::Internal(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
    }
}
