use std::process::ExitCode;

use clap::Parser;

// Many small allocations per request (headers, JSON, Redis replies): mimalloc is
// markedly faster than glibc malloc here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // rustls needs a process-wide crypto provider for rediss:// connections.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tollgate_authserver::cli::run(tollgate_authserver::cli::Cli::parse()).await
}
