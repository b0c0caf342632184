//! The `knock` command; see `knock --help` and `surface::cli`.

use clap::Parser;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    knock::install_crypto_provider();
    // Logging is set up by `run`, once the command's configuration (`[log]`) is known.
    let cli = knock::surface::cli::Cli::parse();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(knock::surface::cli::run(cli.command)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Whoever read the output stopped (`knock classify | head`): nothing more to say.
        Err(e) if e.is::<knock::surface::cli::StdoutClosed>() => ExitCode::SUCCESS,
        // The error and its causes, for people: no backtrace, whatever RUST_BACKTRACE says.
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
