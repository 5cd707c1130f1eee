//! The fuzz targets' seed corpora (`fuzz/corpus/<target>/`) and the inputs of every crash
//! they found (`fuzz/regressions/<target>/`), run through the same property functions as
//! `make fuzz` (`tollgate_authserver::fuzzing`), without a fuzz build. See docs/fuzzing.md.

use std::path::{Path, PathBuf};

use tollgate_authserver::fuzzing::{self, Property, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn inputs(target: &str, kind: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, data)
        })
        .collect()
}

fn property(target: &str) -> Property {
    TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no property function for {target}"))
}

fn run(target: &str) {
    let f = property(target);
    let seeds = inputs(target, "corpus");
    assert!(
        seeds.len() >= 3,
        "{target}: only {} seed files in fuzz/corpus/{target}",
        seeds.len()
    );
    for (path, data) in seeds.iter().chain(inputs(target, "regressions").iter()) {
        let r = std::panic::catch_unwind(|| f(data));
        assert!(r.is_ok(), "{}: a property failed", path.display());
    }
}

#[test]
fn form_parse() {
    run("form_parse");
}

#[test]
fn token_request() {
    run("token_request");
}

#[test]
fn dpop_proof() {
    run("dpop_proof");
}

/// The `dpop_proof` seeds are not all refusals: RFC 9449's example proof passes the
/// property's checks (its time and URI are the property's).
#[test]
fn the_dpop_seeds_include_an_accepted_proof() {
    use tollgate_authserver::dpop::{verify, Expect};
    let (_, data) = inputs("dpop_proof", "corpus")
        .into_iter()
        .find(|(p, _)| p.ends_with("rfc9449-token-request.txt"))
        .unwrap_or_else(|| panic!("no RFC 9449 seed"));
    let proof = String::from_utf8(data).unwrap_or_default();
    let e = Expect {
        method: "POST",
        uri: "https://server.example.com/token",
        now: 1_562_262_616,
        max_age: 300,
        max_skew: 60,
        access_token: None,
        nonces: None,
    };
    assert!(verify(&proof, &e).is_ok());
}

#[test]
fn every_fuzz_target_has_a_property_and_a_corpus() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .unwrap_or_else(|e| panic!("fuzz/fuzz_targets: {e}"))
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".rs"))
                .map(str::to_string)
        })
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml"))
        .unwrap_or_else(|e| panic!("fuzz/Cargo.toml: {e}"));
    for name in &listed {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{name} is not a [[bin]] of fuzz/Cargo.toml"
        );
    }
}

/// The properties are not vacuous: the seeds reach every grant's success and the main
/// refusals.
#[test]
fn the_seeds_reach_every_grant() {
    let mut granted = std::collections::BTreeSet::new();
    let mut codes = std::collections::BTreeSet::new();
    for (path, data) in inputs("token_request", "corpus") {
        let Some((a, _)) = fuzzing::token_answer(&data) else {
            continue;
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        if a.status == 200 {
            granted.insert(name.split('.').next().unwrap_or("").to_string());
        } else if let Some(c) = a.body["error"].as_str() {
            codes.insert(c.to_string());
        }
    }
    for want in [
        "client-credentials-basic",
        "client-credentials-post",
        "authorization-code-pkce",
        "refresh-token",
        "token-exchange",
    ] {
        assert!(
            granted.contains(want),
            "{want} was not granted: {granted:?}"
        );
    }
    for want in [
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_target",
    ] {
        assert!(codes.contains(want), "no seed answers {want}: {codes:?}");
    }
}
