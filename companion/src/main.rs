//! `gatelet-companion`: the control-plane daemon. See `gatelet-companion --help`.

use std::process::ExitCode;

use gatelet_companion::cli::{self, Command};
use gatelet_companion::daemon::{self, EXIT_CONFIG};

fn main() -> ExitCode {
    match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Run(args)) => daemon::run(args),
        Ok(Command::Status(args)) => gatelet_companion::status::run(&args),
        Ok(Command::Update(args)) => gatelet_companion::update::updater::run(&args),
        Ok(Command::Help) => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("gatelet-companion {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gatelet-companion: {e}\n\n{}", cli::USAGE);
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
