//! `WAIT`, failover errors and retry-safe single-use operations against real
//! redis-server processes (a master and, where needed, a replica).

use super::*;
use crate::testutil::RedisServer;

use super::codes::{CONSUME_LUA, UNCONSUME_LUA};
use super::families::CLAIM_LUA;

fn opts(wait_replicas: u32) -> RedisOptions {
    RedisOptions {
        wait_replicas,
        wait_timeout: Duration::from_millis(200),
        retry_budget: Duration::from_millis(300),
        ..Default::default()
    }
}

async fn store(server: &RedisServer, o: RedisOptions) -> RedisStore {
    RedisStore::connect(&StoreUrl::parse(&server.url(0)).unwrap(), o)
        .await
        .unwrap()
}

fn direct(server: &RedisServer) -> ::redis::Connection {
    ::redis::Client::open(server.url(0))
        .unwrap()
        .get_connection()
        .unwrap()
}

fn client(id: &str) -> ClientRecord {
    ClientRecord {
        client_id: id.into(),
        secret_hash: Some(format!("hmac-sha256:{id}")),
        registration_token_hash: None,
        metadata: ClientMetadata {
            grant_types: vec!["client_credentials".into()],
            token_endpoint_auth_method: "client_secret_basic".into(),
            scope: "a".into(),
            access_token_format: "jwt".into(),
            ..Default::default()
        },
        created_at: 1,
        updated_at: 1,
    }
}

fn refresh(exp: u64) -> RefreshTokenRecord {
    RefreshTokenRecord {
        client_id: "c1".into(),
        sub: "alice".into(),
        user_id: "u-alice".into(),
        scope: "a".into(),
        aud: "api".into(),
        grant_id: "g1".into(),
        iat: now_secs(),
        exp,
        jkt: None,
    }
}

#[tokio::test]
async fn acknowledged_durable_writes_are_on_the_replica() {
    let Some(master) = RedisServer::start() else {
        return;
    };
    let replica = master.replica();
    let s = store(&master, opts(1)).await;
    let exp = now_secs() + 600;
    s.create_client(&client("c1")).await.unwrap();
    s.revoke_access_token("j1", exp).await.unwrap();
    s.save_refresh_token("h1", &refresh(exp)).await.unwrap();
    assert!(matches!(
        s.consume_refresh_token("h1", "c1").await.unwrap(),
        Consumed::Fresh(_)
    ));
    assert!(s
        .family_add("g1", &[("j2".into(), exp)], &["h2".into()], exp)
        .await
        .unwrap());
    s.create_user(&UserRecord {
        username: "alice".into(),
        password_hash: "$argon2id$x".into(),
        created_at: 1,
        user_id: "u-alice".into(),
    })
    .await
    .unwrap();
    assert!(s.claim_assertion_jti("a1", exp).await.unwrap());
    assert!(s.claim_dpop_jti("jkt", "p1", exp).await.unwrap());
    // No waiting here: WAIT answered only once the replica had processed all of it.
    let mut r = direct(&replica);
    let got: (bool, bool, String, bool, bool, bool, bool, u64) = ::redis::pipe()
        .exists("auth:client:c1")
        .exists("auth:blacklist:j1")
        .hget("auth:refresh_token:h1", "used")
        .exists("auth:family:{g1}:rt")
        .exists("auth:user:alice")
        .exists("auth:assertion_jti:a1")
        .exists(format!("auth:dpop_jti:{}", dpop_jti_hash("jkt", "p1")))
        .zcard(K_FEED)
        .query(&mut r)
        .unwrap();
    assert_eq!(got, (true, true, "1".into(), true, true, true, true, 1));
}

#[tokio::test]
async fn without_the_replica_durable_writes_fail_and_the_others_do_not() {
    let Some(master) = RedisServer::start() else {
        return;
    };
    let s = store(&master, opts(1)).await;
    let e = s.create_client(&client("c1")).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Unavailable(m) if m.contains("WAIT: 0 of 1")),
        "{e:?}"
    );
    // Not acknowledged, yet it ran on the master (docs/reliability.md).
    assert!(s.get_client("c1").await.unwrap().is_some());
    let exp = now_secs() + 600;
    for r in [
        s.revoke_access_token("j1", exp).await.map(drop),
        s.save_refresh_token("h1", &refresh(exp)).await,
        s.delete_refresh_tokens(&["h1".into()]).await,
        s.put_client(&client("c2")).await,
    ] {
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    }
    // A consumption that could not be acknowledged is given back: once the replica is
    // there, the same refresh token is a first use, not a replay.
    let direct_master = &mut direct(&master);
    let _: () = ::redis::pipe()
        .hset_multiple(
            "auth:refresh_token:h2",
            &[
                ("data", serde_json::to_string(&refresh(exp)).unwrap()),
                ("client_id", "c1".into()),
                ("used", "0".into()),
            ],
        )
        .query(direct_master)
        .unwrap();
    let r = s.consume_refresh_token("h2", "c1").await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    let used: String = ::redis::cmd("HGET")
        .arg("auth:refresh_token:h2")
        .arg("used")
        .query(direct_master)
        .unwrap();
    assert_eq!(used, "0");
    let _replica = master.replica();
    // Generous timeouts here: the point is the released token, not the timing.
    let patient = store(
        &master,
        RedisOptions {
            wait_timeout: Duration::from_millis(1500),
            retry_budget: Duration::from_secs(10),
            ..opts(1)
        },
    )
    .await;
    assert!(matches!(
        patient.consume_refresh_token("h2", "c1").await.unwrap(),
        Consumed::Fresh(_)
    ));
    // Writes whose loss is harmless do not wait.
    s.save_access_token(&crate::store::conformance::token("j9", exp))
        .await
        .unwrap();
    s.rate_limit("k", 10, 60).await.unwrap();
    s.save_auth_code(
        "code",
        &AuthCodeRecord {
            client_id: "c1".into(),
            redirect_uri: "https://app/cb".into(),
            redirect_uri_given: true,
            scope: "a".into(),
            aud: "api".into(),
            sub: "alice".into(),
            user_id: "u-alice".into(),
            code_challenge: None,
            code_challenge_method: None,
            grant_id: "g".into(),
            auth_time: 1,
            exp,
            dpop_jkt: None,
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_demoted_master_answers_unavailable_for_every_kind_of_write() {
    // A store whose connection points at a replica is what a stale connection to a
    // demoted master looks like: reads work, writes get READONLY, inside a MULTI too
    // (EXECABORT) and inside scripts.
    let Some(master) = RedisServer::start() else {
        return;
    };
    let replica = master.replica();
    let s = store(&replica, opts(0)).await;
    let exp = now_secs() + 600;
    for r in [
        s.put_client(&client("c1")).await,
        s.create_client(&client("c2")).await,
        s.revoke_access_token("j1", exp).await.map(drop),
        s.rate_limit("k", 10, 60).await.map(drop),
        s.incr_stats(&[("x", 1)]).await,
        s.save_refresh_token("h1", &refresh(exp)).await,
    ] {
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    }
    assert_eq!(s.get_client("c1").await.unwrap(), None);
}

#[tokio::test]
async fn a_retried_call_recognises_its_own_write() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store(&server, opts(0)).await;
    let exp = now_secs() + 600;
    s.save_refresh_token("h1", &refresh(exp)).await.unwrap();
    let run = |src: &'static str, key: String, args: Vec<String>| {
        let s = &s;
        async move {
            let mut cmd = eval(src, &[&key]);
            for a in &args {
                cmd.arg(a);
            }
            let c = s.conn().await.unwrap();
            let v = s.write(c, &[cmd], false, false).await.unwrap();
            v.into_iter().next().unwrap()
        }
    };
    let uses = |v: Value| -> i64 {
        let (n, _): (i64, String) = ::redis::from_redis_value(v).unwrap();
        n
    };
    let consume = |nonce: &str| {
        run(
            CONSUME_LUA,
            k_refresh("h1"),
            vec!["c1".into(), nonce.into()],
        )
    };
    // The same call again (same nonce) is the first use again; another call is a replay.
    assert_eq!(uses(consume("n1").await), 1);
    assert_eq!(uses(consume("n1").await), 1);
    // A failed call gives back its own consumption, nobody else's.
    let undo = |nonce: &str| run(UNCONSUME_LUA, k_refresh("h1"), vec![nonce.into()]);
    assert_eq!(undo("n2").await, Value::Int(0));
    assert_eq!(undo("n1").await, Value::Int(1));
    assert_eq!(uses(consume("n3").await), 1, "unused again");
    assert_eq!(uses(consume("n2").await), 2);
    assert_eq!(undo("n3").await, Value::Int(0), "replayed since: kept");
    assert_eq!(uses(consume("n3").await), 1);

    let create = |nonce: &str| {
        run(
            CREATE_LUA,
            k_client("x"),
            vec![nonce.into(), "client_id".into(), "x".into()],
        )
    };
    assert_eq!(create("n1").await, Value::Int(1));
    assert_eq!(create("n1").await, Value::Int(1), "the same call again");
    assert_eq!(create("n2").await, Value::Int(0), "another call: taken");

    let claim = |nonce: &str| {
        run(
            CLAIM_LUA,
            k_assertion("a"),
            vec![nonce.into(), exp.to_string()],
        )
    };
    assert_eq!(claim("n1").await, Value::Int(1));
    assert_eq!(claim("n1").await, Value::Int(1));
    assert_eq!(claim("n2").await, Value::Int(0));
}

#[tokio::test]
async fn wait_without_a_timeout_is_refused() {
    let url = StoreUrl::parse("redis://127.0.0.1:1/0").unwrap();
    let r = RedisStore::connect(
        &url,
        RedisOptions {
            wait_replicas: 1,
            wait_timeout: Duration::ZERO,
            ..Default::default()
        },
    )
    .await;
    assert!(matches!(r, Err(StoreError::Config(_))), "{:?}", r.err());
}
