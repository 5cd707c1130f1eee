//! The `authserver` binary's subcommands against a real `redis-server`: `init` (idempotent),
//! `status`, `keys` (with the key-encryption key: rewrap, migration, a wrong key),
//! `cleanup`, `cache-cleanup`, production mode, and configuration errors.

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

fn command(redis: &Redis, args: &[&str], env: &[(&str, &str)], remove: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_authserver"));
    c.args(args)
        .env_clear()
        .env(
            "TOLLGATE_STORE",
            format!("redis://127.0.0.1:{}/0", redis.port),
        )
        .env("TOLLGATE_SECRET_PEPPER", "pepper-for-tests")
        .env("ORDERS_SECRET", "orders-secret-orders-secret-orders-secret")
        .env("TOLLGATE_LOG", "warn");
    for (k, v) in env {
        c.env(k, v);
    }
    for k in remove {
        c.env_remove(k);
    }
    c
}

/// Run to completion, within a liveness bound (not a performance threshold): a `serve` that
/// should have refused to start but listens instead is killed and fails the test.
fn bounded(mut c: Command) -> Output {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "still running (it should have refused to start): {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn authserver(redis: &Redis, args: &[&str]) -> Output {
    authserver_with(redis, args, &[], &[])
}

fn authserver_with(redis: &Redis, args: &[&str], env: &[(&str, &str)], remove: &[&str]) -> Output {
    bounded(command(redis, args, env, remove))
}

/// A raw Redis command, as a backup or an operator with `redis-cli` sees the data.
fn raw<T: redis::FromRedisValue>(redis: &Redis, cmd: &mut redis::Cmd) -> T {
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/0", redis.port)).unwrap();
    let mut c = client.get_connection().unwrap();
    cmd.query(&mut c).unwrap()
}

fn raw_keys(redis: &Redis) -> std::collections::BTreeMap<String, String> {
    raw(redis, redis::cmd("HGETALL").arg("auth:keys"))
}

const KEK_A: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
const KEK_B: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

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

fn failed_with(o: &Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "succeeded: {err}");
    assert!(!err.contains("panicked"), "a crash, not an error: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
    err
}

/// KEK rotation: keys sealed under A; B becomes current with A as previous; `keys rewrap`
/// moves every key to B and a second run changes nothing; then A can go.
#[test]
fn keys_rewrap_moves_every_key_to_the_current_kek_and_is_idempotent() {
    let Some(redis) = Redis::start() else { return };
    let a = [("TOLLGATE_KEY_ENCRYPTION_KEY", KEK_A)];
    let listed = json_of(&authserver_with(&redis, &["keys", "generate"], &a, &[]));
    let kek_a = listed[0]["kek_id"].as_str().unwrap().to_string();
    json_of(&authserver_with(
        &redis,
        &["keys", "rotate", "--delay", "600"],
        &a,
        &[],
    ));
    let before = raw_keys(&redis);
    assert_eq!(before.len(), 2);

    let b_with_a = [
        ("TOLLGATE_KEY_ENCRYPTION_KEY", KEK_B),
        ("TOLLGATE_KEY_ENCRYPTION_KEYS_PREVIOUS", KEK_A),
    ];
    let first = json_of(&authserver_with(
        &redis,
        &["keys", "rewrap"],
        &b_with_a,
        &[],
    ));
    assert_eq!(
        (first["rewrapped"].as_u64(), first["unchanged"].as_u64()),
        (Some(2), Some(0))
    );
    let kek_b = first["kek_id"].as_str().unwrap().to_string();
    assert_ne!(kek_a, kek_b);
    let after = raw_keys(&redis);
    let second = json_of(&authserver_with(
        &redis,
        &["keys", "rewrap"],
        &b_with_a,
        &[],
    ));
    assert_eq!(
        (second["rewrapped"].as_u64(), second["unchanged"].as_u64()),
        (Some(0), Some(2))
    );
    assert_eq!(raw_keys(&redis), after, "a second run writes nothing");

    // B alone opens everything now; the schedule is what it was.
    let b = [("TOLLGATE_KEY_ENCRYPTION_KEY", KEK_B)];
    let listed = json_of(&authserver_with(&redis, &["keys", "generate"], &b, &[]));
    let states: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["state"].as_str().unwrap(), k["kek_id"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        vec![
            ("signing", kek_b.as_str()),
            ("published, pending", kek_b.as_str())
        ]
    );
    for (kid, v) in &after {
        assert!(!v.contains("PRIVATE KEY"), "{kid}");
        assert_ne!(before[kid], *v, "{kid} re-encrypted");
    }
}

/// A wrong or missing KEK: the start stops with a message naming the kid and the KEK it
/// needs (never a crash, never a key in the message), and the store is left as it was.
#[test]
fn wrong_kek_is_a_clear_error_not_a_crash() {
    let Some(redis) = Redis::start() else { return };
    let a = [("TOLLGATE_KEY_ENCRYPTION_KEY", KEK_A)];
    let listed = json_of(&authserver_with(&redis, &["keys", "generate"], &a, &[]));
    let kid = listed[0]["kid"].as_str().unwrap().to_string();
    let kek_a = listed[0]["kek_id"].as_str().unwrap().to_string();
    let before = raw_keys(&redis);
    for (args, env) in [
        (
            &["keys", "generate"][..],
            &[("TOLLGATE_KEY_ENCRYPTION_KEY", KEK_B)][..],
        ),
        (
            &["keys", "rewrap"][..],
            &[("TOLLGATE_KEY_ENCRYPTION_KEY", KEK_B)][..],
        ),
        (&["keys", "generate"][..], &[][..]),
    ] {
        let o = authserver_with(&redis, args, env, &[]);
        let err = failed_with(&o, &[&kid, "TOLLGATE_KEY_ENCRYPTION_KEY"]);
        if !env.is_empty() {
            assert!(err.contains(&kek_a), "names the KEK it needs: {err}");
        }
        assert!(!err.contains(KEK_A) && !err.contains(KEK_B) && !err.contains("PRIVATE"));
    }
    // `serve` too, before it listens.
    let o = authserver_with(
        &redis,
        &["serve"],
        &[
            ("TOLLGATE_KEY_ENCRYPTION_KEY", KEK_B),
            ("TOLLGATE_LISTEN", "127.0.0.1:0"),
        ],
        &[],
    );
    failed_with(&o, &[&kid, &kek_a]);
    assert_eq!(raw_keys(&redis), before);
    // `keys list` and `cleanup` read the records only: no KEK needed.
    let listed = json_of(&authserver(&redis, &["keys", "list"]));
    assert_eq!(listed[0]["kek_id"], kek_a.as_str());
    json_of(&authserver(&redis, &["cleanup"]));
}

/// Upgrade path: a key stored in clear by an earlier version (or a run without a KEK) is
/// sealed by the first start with a KEK.
#[test]
fn clear_text_key_record_is_migrated_on_first_start() {
    let Some(redis) = Redis::start() else { return };
    json_of(&authserver(&redis, &["keys", "generate"]));
    let clear = raw_keys(&redis);
    assert!(
        clear.values().all(|v| v.contains("PRIVATE KEY")),
        "no KEK: in clear"
    );
    let listed = json_of(&authserver(&redis, &["keys", "list"]));
    assert!(listed[0]["kek_id"].is_null());

    let a = [("TOLLGATE_KEY_ENCRYPTION_KEY", KEK_A)];
    let listed = json_of(&authserver_with(&redis, &["keys", "generate"], &a, &[]));
    assert_eq!(listed.as_array().unwrap().len(), 1, "the same key, sealed");
    assert!(listed[0]["kek_id"].is_string());
    let sealed = raw_keys(&redis);
    assert_eq!(
        sealed.keys().collect::<Vec<_>>(),
        clear.keys().collect::<Vec<_>>()
    );
    for (kid, v) in &sealed {
        assert!(!v.contains("PRIVATE KEY"), "{kid}");
        let rec: Value = serde_json::from_str(&clear[kid]).unwrap();
        let pem = rec["private_pem"].as_str().unwrap();
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!v.contains(line), "{kid} holds key material");
        }
    }
}

/// Production mode: no start without a KEK or without the pepper, and nothing generated
/// into the store instead (the pepper used to fall back to `auth_config`).
#[test]
fn production_mode_without_a_kek_or_pepper_refuses_to_start() {
    let Some(redis) = Redis::start() else { return };
    let prod = ("TOLLGATE_PRODUCTION", "true");
    let kek = ("TOLLGATE_KEY_ENCRYPTION_KEY", KEK_A);
    for (args, env, remove, missing) in [
        (
            &["serve"][..],
            vec![prod],
            &[][..],
            "TOLLGATE_KEY_ENCRYPTION_KEY",
        ),
        (
            &["keys", "generate"][..],
            vec![prod],
            &[][..],
            "TOLLGATE_KEY_ENCRYPTION_KEY",
        ),
        (
            &["keys", "rotate"][..],
            vec![prod],
            &[][..],
            "TOLLGATE_KEY_ENCRYPTION_KEY",
        ),
        (
            &["serve"][..],
            vec![prod, kek],
            &["TOLLGATE_SECRET_PEPPER"][..],
            "TOLLGATE_SECRET_PEPPER",
        ),
        (
            &["keys", "generate"][..],
            vec![prod, kek],
            &["TOLLGATE_SECRET_PEPPER"][..],
            "TOLLGATE_SECRET_PEPPER",
        ),
    ] {
        let mut env = env;
        env.push(("TOLLGATE_LISTEN", "127.0.0.1:0"));
        let o = authserver_with(&redis, args, &env, remove);
        failed_with(&o, &[missing, "production"]);
    }
    let pepper: Option<String> = raw(
        &redis,
        redis::cmd("HGET").arg("auth_config").arg("secret_pepper"),
    );
    assert_eq!(pepper, None, "no pepper generated into Redis");
    assert!(raw_keys(&redis).is_empty(), "no key written");
    // With both it starts; the keys are sealed and the pepper stays out of Redis.
    json_of(&authserver_with(
        &redis,
        &["keys", "generate"],
        &[prod, kek],
        &[],
    ));
    assert!(raw_keys(&redis)
        .values()
        .all(|v| !v.contains("PRIVATE KEY")));
    let pepper: Option<String> = raw(
        &redis,
        redis::cmd("HGET").arg("auth_config").arg("secret_pepper"),
    );
    assert_eq!(pepper, None);
}
