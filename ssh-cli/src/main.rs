//! `pedm-ssh`: parse the command line, run the command, map the outcome to an exit code
//! (0 ok, 1 error, 2 usage — clap's own, 3 sign-in needed, 4 denied, 5 pending).

use clap::Parser;
use pedm_ssh::app::{self, Ctx};
use pedm_ssh::cli::Cli;
use pedm_ssh::exit::Exit;
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Usage errors: clap prints them and exits 2 itself.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}\nnext: try again");
            return ExitCode::from(Exit::Error.code());
        }
    };
    let ctx = Ctx::from_process();
    let outcome = runtime.block_on(app::run(cli, &ctx));
    let _ = std::io::stdout().flush();
    match outcome {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(failure) => {
            eprintln!("{failure}");
            ExitCode::from(failure.exit.code())
        }
    }
}
