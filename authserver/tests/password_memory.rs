//! Issue 12 item 3: password checks (Argon2id, 19 MiB each) are bounded by a memory
//! budget. 100 parallel sign-ins against a spawned `authserver serve`: every one is
//! answered (401, or 503 with `Retry-After` when the checks are busy), the server stays up,
//! and its peak resident memory (`VmHWM`) grows by no more than the budget plus a small
//! allowance for the connections. Unbounded, the 100 checks run at once (about 1.9 GiB).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN: &str = "admin-token-for-the-memory-test";
/// The budget given to the server: two checks at once.
const BUDGET_MIB: u64 = 40;
/// Memory besides the checks that 100 connections and their pages may take at once.
const ALLOWANCE_MIB: u64 = 16;
const PARALLEL: usize = 100;

struct Server {
    child: Child,
    port: u16,
    /// The admin listener (registration lives there).
    admin_port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start() -> Server {
    let (port, admin_port) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_authserver"))
        .arg("serve")
        .env_clear()
        .env("TOLLGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("TOLLGATE_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN)
        .env("TOLLGATE_SECRET_PEPPER", "pepper-for-the-memory-test")
        .env("TOLLGATE_PASSWORD_MEMORY_MIB", BUDGET_MIB.to_string())
        // Every sign-in below is for its own username: no counter is in the way anyway.
        .env("TOLLGATE_RATE_LIMIT_PER_IP", "0")
        .env("TOLLGATE_RATE_LIMIT_DEFAULT", "0")
        .env("TOLLGATE_REQUEST_TIMEOUT_MS", "60000")
        .env("TOLLGATE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server {
        child,
        port,
        admin_port,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _, _)) = request(port, "GET /healthz HTTP/1.1\r\n", &[], "") {
            return server;
        }
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One request on its own connection: (status, head, body).
fn request(
    port: u16,
    line: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut req = format!("{line}Host: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_string(), body.to_string()))
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap() + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].replace("&amp;", "&")
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Peak resident memory of a process, KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn parallel_sign_ins_stay_within_the_password_memory_budget() {
    let mut server = start();
    let port = server.port;
    let md = r#"{"client_name":"SPA","redirect_uris":["http://127.0.0.1/cb"],"grant_types":["authorization_code"],"token_endpoint_auth_method":"none","scope":"api:read","skip_consent":true}"#;
    let (status, _, body) = request(
        server.admin_port,
        "POST /oauth2/register HTTP/1.1\r\n",
        &[
            ("Authorization", &format!("Bearer {ADMIN}")),
            ("Content-Type", "application/json"),
        ],
        md,
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let client: serde_json::Value = serde_json::from_str(&body).unwrap();
    let client_id = client["client_id"].as_str().unwrap();
    let q = format!(
        "response_type=code&client_id={client_id}&redirect_uri={}&scope=api%3Aread\
&code_challenge={}&code_challenge_method=S256",
        enc("http://127.0.0.1/cb"),
        "a".repeat(43)
    );
    let (status, head, page) = request(
        port,
        &format!("GET /oauth2/authorize?{q} HTTP/1.1\r\n"),
        &[],
        "",
    )
    .unwrap();
    assert_eq!(status, 200, "{page}");
    let cookie = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie: "))
        .map(|l| &l["set-cookie: ".len()..])
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_string();
    let csrf = hidden(&page, "csrf");
    let authz = hidden(&page, "authz");
    let login = |user: &str| {
        let body = format!(
            "csrf={}&authz={}&username={user}&password=wrong-password-{user}",
            enc(&csrf),
            enc(&authz)
        );
        request(
            port,
            "POST /oauth2/login HTTP/1.1\r\n",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Cookie", &cookie),
            ],
            &body,
        )
    };
    // Warm up: one check (the dummy hash for unknown users is made on first use).
    let (status, _, page) = login("warmup").unwrap();
    assert_eq!(status, 401, "{page}");
    let pid = server.child.id();
    let before = vm_hwm_kib(pid);

    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..PARALLEL)
            .map(|i| {
                let login = &login;
                s.spawn(move || {
                    let (status, head, _) = login(&format!("user{i}")).unwrap();
                    (status, head)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    assert_eq!(answers.len(), PARALLEL);
    for (status, head) in &answers {
        match status {
            401 => {}
            503 => assert!(
                head.to_ascii_lowercase().contains("retry-after: 1"),
                "{head}"
            ),
            s => panic!("unexpected answer {s}: {head}"),
        }
    }
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server exited"
    );
    let after = vm_hwm_kib(pid);
    let cap = before + (BUDGET_MIB + ALLOWANCE_MIB) * 1024;
    let checked = answers.iter().filter(|(s, _)| *s == 401).count();
    eprintln!(
        "VmHWM {before} KiB before, {after} KiB after ({} KiB more; cap {cap} KiB); {checked} of {PARALLEL} checked, the rest 503",
        after.saturating_sub(before)
    );
    assert!(
        after <= cap,
        "peak RSS {after} KiB exceeds {cap} KiB (before {before} KiB + budget {BUDGET_MIB} MiB + {ALLOWANCE_MIB} MiB)"
    );
    let (status, _, _) = request(port, "GET /healthz HTTP/1.1\r\n", &[], "").unwrap();
    assert_eq!(status, 200);
}
