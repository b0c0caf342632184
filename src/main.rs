//! The `knock` command; see `knock --help` and `surface::cli`.

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    knock::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KNOCK_LOG")
                .unwrap_or_else(|_| "knock=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = knock::surface::cli::Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(knock::surface::cli::run(cli.command))
}
