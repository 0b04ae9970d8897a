//! The `posbridge` binary: parse the command line, start the runtime, hand over to
//! [`posbridge::cli::run`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before the runtime's threads exist: the arena limit applies to threads started later.
    posbridge::telemetry::tune_allocator();
    let cli = posbridge::cli::Cli::parse();
    let rt =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("posbridge: cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
    rt.block_on(posbridge::cli::run(cli))
}
