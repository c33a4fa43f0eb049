//! `gatelet-companion`: the control-plane daemon. See `gatelet-companion --help`.

use std::process::ExitCode;

use gatelet_companion::cli::{self, Command};
use gatelet_companion::daemon::{self, EXIT_CONFIG};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The container updater's helpers (deploy/gatelet-container-update.sh runs them from the
    // image that is running; the image carries no gatelet-update).
    match gatelet_companion::update::container::parse(&args) {
        Some(Ok(cmd)) => return gatelet_companion::update::container::run(&cmd),
        Some(Err(e)) => {
            eprintln!(
                "gatelet-companion: {e}\n\n{}",
                gatelet_companion::update::container::USAGE
            );
            return ExitCode::from(64);
        }
        None => {}
    }
    match cli::parse(args) {
        Ok(Command::Run(args)) => daemon::run(args),
        Ok(Command::Status(args)) => gatelet_companion::status::run(&args),
        Ok(Command::DiagPassword(state_dir)) => {
            use gatelet_companion::diag::password;
            match password::set_from(&state_dir, &mut std::io::stdin().lock()) {
                Ok(path) => {
                    println!(
                        "password hash written to {} (the companion reads it when it starts)",
                        path.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gatelet-companion diag-password: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Ok(Command::DiagMetricsToken(state_dir)) => {
            use gatelet_companion::diag::scrape_token;
            match scrape_token::create(&state_dir, &ring::rand::SystemRandom::new()) {
                Ok((token, path)) => {
                    println!("{token}");
                    eprintln!(
                        "its hash is in {} (the companion reads it when it starts); scrape with \
                         Authorization: Bearer <the token above>",
                        path.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gatelet-companion diag-metrics-token: {e}");
                    ExitCode::FAILURE
                }
            }
        }
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
