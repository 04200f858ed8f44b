//! The `citystream` binary: parse, validate, run; errors end here with a message and a
//! non-zero exit code.

use std::process::ExitCode;

use clap::Parser;
use citystream::cli::{Cli, Command};
use citystream::contract::Stream;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,rdkafka=warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Simulate(args) => {
            let (fleet, produce) = args.validate()?;
            let summary = citystream::simulate::producer::produce(fleet, &produce)?;
            println!("simulated {} records in {:.2} s ({:.0} records/s, {:.1} MB/s)", summary.delivered, summary.seconds, summary.rate(), summary.bytes as f64 / summary.seconds.max(1e-9) / 1e6);
            for s in Stream::ALL {
                println!("  {}{:<16} {:>10}", produce.topic_prefix, s.name(), summary.per_stream[s.index()]);
            }
            println!("  injected late: {}, injected malformed: {}", summary.injected_late, summary.injected_malformed);
            Ok(())
        }
    }
}
