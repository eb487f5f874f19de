//! The `veto` command line: one module per subcommand.

mod client;
mod cmd;
mod logging;
mod util;

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = cmd::Cli::parse();
    match cmd::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<cmd::fleet::NotInForce>().is_some() {
                std::process::ExitCode::from(cmd::fleet::EXIT_NOT_IN_FORCE)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
