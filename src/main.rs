//! The `knock` command; see `knock --help` and `surface::cli`.

use clap::Parser;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    knock::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KNOCK_LOG")
                .unwrap_or_else(|_| "knock=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = knock::surface::cli::Cli::parse();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(knock::surface::cli::run(cli.command)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The error and its causes, for people: no backtrace, whatever RUST_BACKTRACE says.
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
