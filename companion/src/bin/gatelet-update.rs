//! `gatelet-update`: the self-updater, run as root by `gatelet-update.service`. See
//! `gatelet-update --help` and docs/self-update.md. Its own binary so that the update code
//! (manifests, signatures, downloads, the state machine) is not in the daemon's memory.

use std::process::ExitCode;

use gatelet_companion::update::updater::{self, Command, EXIT_USAGE, USAGE};

fn main() -> ExitCode {
    match updater::parse(std::env::args().skip(1)) {
        Ok(Command::Run(args)) => updater::run(&args),
        Ok(Command::Help) => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("gatelet-update {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gatelet-update: {e}\n\n{USAGE}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}
