use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    // rustls needs a process-wide crypto provider for rediss:// connections.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tollgate_authserver::cli::run(tollgate_authserver::cli::Cli::parse()).await
}
