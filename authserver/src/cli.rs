//! The `authserver` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, Settings};
use crate::keys::SigningAlg;
use crate::state::AppState;
use crate::{http, jobs, open_cache, open_store};

/// Tollgate authorization server: OAuth 2.0 for services, JWT access tokens (RFC 9068),
/// introspection, revocation and the revocation feed for edge filters.
///
/// Every option can be set by its environment variable (shown in brackets) or in the YAML
/// file given by --config.
#[derive(Debug, Parser)]
#[command(name = "authserver", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API.
    Serve,
    /// One pass of the token cleanup (run every 5 minutes by a CronJob).
    Cleanup,
    /// Service cache (DB 1) maintenance: default TTLs, per-service LRU trimming, stats.
    CacheCleanup,
    /// Seed clients and auth_config from a YAML file; idempotent.
    Init {
        /// The seed file.
        #[arg(long, short, env = "TOLLGATE_SEED_FILE")]
        file: PathBuf,
    },
    /// Signing keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// What an operator checks first: stats, counts, keys, effective config, Redis role.
    Status,
    /// Print the OpenAPI 3.1 contract (docs/openapi.json is `openapi --part full`).
    Openapi {
        /// Which part: both listeners, or one listener's operations.
        #[arg(long, value_enum, default_value = "full")]
        part: http::openapi::Part,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Create a signing key if the store has none.
    Generate,
    /// Publish a new key now; it signs after TOLLGATE_KEY_ACTIVATION_DELAY seconds, and
    /// the current key retires then.
    Rotate {
        /// Override the activation delay, seconds.
        #[arg(long)]
        delay: Option<u64>,
    },
    /// List keys and their state.
    List,
    /// Re-encrypt every stored private key under the current key-encryption key (after
    /// changing TOLLGATE_KEY_ENCRYPTION_KEY, with the old one in
    /// TOLLGATE_KEY_ENCRYPTION_KEYS_PREVIOUS); also seals keys still in clear. Idempotent,
    /// safe while servers serve.
    Rewrap,
}

fn init_tracing(cfg: &Config) {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_env("TOLLGATE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if cfg.log_format == "json" {
        let _ = builder.json().flatten_event(true).try_init();
    } else {
        let _ = builder.try_init();
    }
}

fn print_json(v: &impl serde::Serialize) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("cannot print result: {e}"),
    }
}

/// Run the command line; the exit code says how it went.
pub async fn run(cli: Cli) -> ExitCode {
    let cfg = match cli.settings.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("authserver: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&cfg);
    match execute(cli.command, cfg).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("authserver: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(cmd: Command, cfg: Config) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    match cmd {
        Command::Serve => serve(cfg).await,
        Command::Cleanup => {
            let store = open_store(&cfg.store, &cfg).await.map_err(|e| err(&e))?;
            let ttl = cfg.access_token_ttl.max(3600);
            let r = jobs::cleanup::run(store.as_ref(), ttl)
                .await
                .map_err(|e| err(&e))?;
            tracing::info!(
                expired_tokens = r.expired_tokens,
                feed_trimmed = r.feed_entries_trimmed,
                keys_removed = r.keys_removed,
                "cleanup done"
            );
            print_json(&r);
            Ok(())
        }
        Command::CacheCleanup => {
            let cache = open_cache(&cfg.cache_store, &cfg)
                .await
                .map_err(|e| err(&e))?;
            let r = jobs::cache_cleanup::run(cache.as_ref())
                .await
                .map_err(|e| err(&e))?;
            tracing::info!(
                services = r.services,
                entries = r.entries,
                trimmed = r.trimmed,
                ttl_set = r.ttl_set,
                "cache cleanup done"
            );
            print_json(&r);
            Ok(())
        }
        Command::Init { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let seed = jobs::init::parse_seed(&text).map_err(|e| err(&e))?;
            let store = open_store(&cfg.store, &cfg).await.map_err(|e| err(&e))?;
            let cache = if seed.cache_config.is_some() {
                Some(
                    open_cache(&cfg.cache_store, &cfg)
                        .await
                        .map_err(|e| err(&e))?,
                )
            } else {
                None
            };
            // The pepper (and the first signing key) come from the same start-up path as
            // `serve`, so secrets seeded here verify there.
            let state = AppState::new(cfg, store.clone())
                .await
                .map_err(|e| err(&e))?;
            let r = jobs::init::run(store.as_ref(), cache.as_deref(), &state.pepper, &seed)
                .await
                .map_err(|e| err(&e))?;
            print_json(&r);
            Ok(())
        }
        Command::Keys { action } => {
            let store = open_store(&cfg.store, &cfg).await.map_err(|e| err(&e))?;
            let alg = SigningAlg::parse(&cfg.signing_alg).map_err(|e| err(&e))?;
            let ttl = cfg.access_token_ttl.max(3600);
            match action {
                KeysAction::Generate => {
                    let state = AppState::new(cfg, store.clone())
                        .await
                        .map_err(|e| err(&e))?;
                    drop(state);
                }
                KeysAction::Rotate { delay } => {
                    cfg.check_production().map_err(|e| err(&e))?;
                    let k = jobs::keys::rotate(
                        store.as_ref(),
                        alg,
                        delay.unwrap_or(cfg.key_activation_delay),
                        &cfg.key_encryption,
                    )
                    .await
                    .map_err(|e| err(&e))?;
                    tracing::info!(kid = %k.kid, active_from = k.active_from, "new signing key published");
                }
                KeysAction::List => {}
                KeysAction::Rewrap => {
                    let r = jobs::keys::rewrap(store.as_ref(), &cfg.key_encryption, false)
                        .await
                        .map_err(|e| err(&e))?;
                    tracing::info!(
                        kek_id = %r.kek_id,
                        migrated = r.migrated,
                        rewrapped = r.rewrapped,
                        unchanged = r.unchanged,
                        "signing keys sealed under the current key-encryption key"
                    );
                    print_json(&r);
                    return Ok(());
                }
            }
            print_json(
                &jobs::keys::list(store.as_ref(), ttl)
                    .await
                    .map_err(|e| err(&e))?,
            );
            Ok(())
        }
        Command::Openapi { part } => {
            print!("{}", http::openapi::render(part));
            Ok(())
        }
        Command::Status => {
            let store = open_store(&cfg.store, &cfg).await.map_err(|e| err(&e))?;
            print_json(
                &jobs::status::run(store.as_ref(), &cfg)
                    .await
                    .map_err(|e| err(&e))?,
            );
            Ok(())
        }
    }
}

async fn serve(cfg: Config) -> Result<(), String> {
    use futures::FutureExt;
    let (listen, admin_listen) = (cfg.listen, cfg.admin_listen);
    tracing::info!(listen = %listen, admin_listen = %admin_listen, issuer = %cfg.issuer, store = %cfg.store.redacted(), "starting");
    let store = open_store(&cfg.store, &cfg)
        .await
        .map_err(|e| e.to_string())?;
    let limits = http::server::ConnLimits::from_config(&cfg);
    let state = AppState::new(cfg, store).await.map_err(|e| e.to_string())?;
    state.spawn_background();
    let public = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let admin = tokio::net::TcpListener::bind(admin_listen)
        .await
        .map_err(|e| format!("cannot listen on {admin_listen} (TOLLGATE_ADMIN_LISTEN): {e}"))?;
    let stop = shutdown().shared();
    {
        // On shutdown, held long polls of the revocation feed are answered at once.
        let (state, stop) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            stop.await;
            state.feed_waiters.shutdown();
        });
    }
    let module = http::module_listener::spawn(&state, limits, stop.clone()).await?;
    // The optional TLS listener of the public endpoints (RFC 8705 certificate binding).
    let tls = match state.cfg.tls.clone() {
        None => None,
        Some(t) => {
            let listener = http::tls::listener(&t)?;
            let l = tokio::net::TcpListener::bind(t.addr)
                .await
                .map_err(|e| format!("cannot listen on {} (TOLLGATE_TLS_LISTEN): {e}", t.addr))?;
            tracing::info!(tls_listen = %t.addr, "serving TLS");
            let app = http::router(state.clone());
            Some(tokio::spawn(http::server::serve_tls(
                l,
                app,
                limits,
                stop.clone(),
                Some(listener),
            )))
        }
    };
    tracing::info!(listen = %listen, admin_listen = %admin_listen, "serving");
    // hyper with a timer: header timeout, send timeout and head limits (see http::server).
    tokio::join!(
        http::server::serve(public, http::router(state.clone()), limits, stop.clone()),
        http::server::serve(admin, http::admin_router(state.clone()), limits, stop),
    );
    if let Some(m) = module {
        let _ = m.await;
    }
    if let Some(t) = tls {
        let _ = t.await;
    }
    state.flush_stats().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
