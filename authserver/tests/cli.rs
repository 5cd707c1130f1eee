//! The `authserver` binary's subcommands against a real `redis-server`: `init` (idempotent),
//! `status`, `keys`, `cleanup`, `cache-cleanup`, and configuration errors.

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Option<Redis> {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = match Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--dir", &dir.path().display().to_string()])
            .stdout(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    std::env::var_os("TOLLGATE_REQUIRE_REDIS").is_none(),
                    "redis-server is required: {e}"
                );
                eprintln!("SKIP: redis-server not available: {e}");
                return None;
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Redis {
            child,
            port,
            _dir: dir,
        })
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn authserver(redis: &Redis, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_authserver"))
        .args(args)
        .env_clear()
        .env(
            "TOLLGATE_STORE",
            format!("redis://127.0.0.1:{}/0", redis.port),
        )
        .env("TOLLGATE_SECRET_PEPPER", "pepper-for-tests")
        .env("ORDERS_SECRET", "orders-secret-orders-secret-orders-secret")
        .env("TOLLGATE_LOG", "warn")
        .output()
        .unwrap()
}

fn json_of(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

const SEED: &str = r#"
config:
  access_token_ttl: 600
  rate_limit_per_client: 5000
cache_config:
  default_ttl: 3600
  max_entries_per_service: 50
clients:
  - client_id: orders
    client_name: Orders service
    client_secret_env: ORDERS_SECRET
    scope: "api:read api:write"
  - client_id: gateway
    client_secret: "gateway-secret-gateway-secret-gateway"
    scope: "tollgate:edge"
"#;

#[test]
fn init_is_idempotent_and_status_reports_it() {
    let Some(redis) = Redis::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.yaml");
    std::fs::write(&seed, SEED).unwrap();
    let seed = seed.display().to_string();

    let first = json_of(&authserver(&redis, &["init", "--file", &seed]));
    assert_eq!(first["clients_created"], 2);
    assert_eq!(first["config_keys"], 2);
    let second = json_of(&authserver(&redis, &["init", "--file", &seed]));
    assert_eq!(second["clients_created"], 0);
    assert_eq!(second["clients_updated"], 0);
    assert_eq!(second["clients_unchanged"], 2);

    let status = json_of(&authserver(&redis, &["status"]));
    assert_eq!(status["clients"], 2);
    assert_eq!(status["store"]["role"], "master");
    assert_eq!(
        status["effective_config"]["access_token_ttl"], 600,
        "auth_config override"
    );
    assert_eq!(status["effective_config"]["rate_limit_per_client"], 5000);
    let text = serde_json::to_string(&status).unwrap();
    assert!(!text.contains("pepper-for-tests"), "no secret in status");
    assert!(!text.contains("orders-secret"), "no secret in status");
    assert_eq!(
        status["signing_keys"].as_array().unwrap().len(),
        1,
        "init creates the first key"
    );
}

#[test]
fn bad_seed_files_are_refused_with_a_message() {
    let Some(redis) = Redis::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (body, needle) in [
        ("clients:\n  - scope: a\n", "client_id"),
        ("config:\n  access_token_tl: 5\n", "access_token_tl"),
        (
            "clients:\n  - client_id: x\n    client_secret: short\n",
            "32 characters",
        ),
        (
            "clients:\n  - client_id: x\n    client_secret_env: NOPE_NOT_SET\n",
            "NOPE_NOT_SET",
        ),
        ("clients:\n  - client_id: x\n", "confidential client needs"),
        ("unknown_top: 1\n", "unknown field"),
    ] {
        let p = dir.path().join("bad.yaml");
        std::fs::write(&p, body).unwrap();
        let o = authserver(&redis, &["init", "--file", &p.display().to_string()]);
        assert!(!o.status.success(), "{body} accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{body}: {err}");
    }
}

#[test]
fn keys_rotate_publishes_a_pending_key() {
    let Some(redis) = Redis::start() else { return };
    let gen = json_of(&authserver(&redis, &["keys", "generate"]));
    assert_eq!(gen.as_array().unwrap().len(), 1);
    assert_eq!(gen[0]["state"], "signing");
    let rot = json_of(&authserver(&redis, &["keys", "rotate", "--delay", "600"]));
    let states: Vec<&str> = rot
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["signing", "published, pending"]);
    assert!(
        rot[0]["retire_at"].as_u64().is_some(),
        "the old key retires when the new one signs"
    );
}

#[test]
fn cleanup_and_cache_cleanup_run() {
    let Some(redis) = Redis::start() else { return };
    let c = json_of(&authserver(&redis, &["cleanup"]));
    assert_eq!(c["expired_tokens"], 0);
    let cc = json_of(&authserver(&redis, &["cache-cleanup"]));
    assert_eq!(cc["services"], 0);
}

#[test]
fn configuration_errors_exit_2_and_name_the_variable() {
    let o = Command::new(env!("CARGO_BIN_EXE_authserver"))
        .arg("status")
        .env_clear()
        .env("TOLLGATE_STORE", "mongodb://nope")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("TOLLGATE_STORE"));
    let o = Command::new(env!("CARGO_BIN_EXE_authserver"))
        .args(["--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "serve",
        "cleanup",
        "cache-cleanup",
        "init",
        "keys",
        "status",
        "TOLLGATE_LISTEN",
        "TOLLGATE_STORE",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
}

#[test]
fn unreachable_redis_fails_fast_with_a_clear_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = Command::new(env!("CARGO_BIN_EXE_authserver"))
        .arg("status")
        .env_clear()
        .env("TOLLGATE_STORE", format!("redis://127.0.0.1:{port}/0"))
        .env("TOLLGATE_STORE_TIMEOUT_MS", "300")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("store unavailable"));
}
