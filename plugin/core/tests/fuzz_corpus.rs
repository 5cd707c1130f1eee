//! The fuzz targets' seed corpora (`fuzz/corpus/<target>/`) and the inputs of every crash
//! they found (`fuzz/regressions/<target>/`), run through the same property functions as
//! `make fuzz` (`tollgate_edge_core::fuzzing`), without a fuzz build. See docs/fuzzing.md.
#![cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]

use std::path::{Path, PathBuf};

use tollgate_edge_core::fuzzing::{self, FixtureKey, Property, TARGETS};

fn fuzz_dir() -> PathBuf {
    if cfg!(target_os = "wasi") {
        // Under `make wasm-test` only the package directory is visible, as `.`.
        PathBuf::from("fuzz")
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
    }
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
        #[cfg(not(target_family = "wasm"))]
        {
            let r = std::panic::catch_unwind(|| f(data));
            assert!(r.is_ok(), "{}: a property failed", path.display());
        }
        #[cfg(target_family = "wasm")]
        {
            eprintln!("{}", path.display());
            f(data);
        }
    }
}

macro_rules! corpus_tests {
    ($($name:ident),*) => {
        $(#[test]
        fn $name() {
            run(stringify!($name));
        })*
    };
}

corpus_tests!(
    jwt_parse,
    jwt_verify,
    jwks_parse,
    config_parse,
    revocation_feed,
    introspection_answer,
    lease_answer
);

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

/// The seeds made from the fixture keys are in the corpus, byte for byte (so that a change
/// of the fixtures cannot leave stale seeds behind). `FUZZ_WRITE_SEEDS=1` writes them.
#[test]
fn generated_seeds_are_in_the_corpus() {
    let write = std::env::var_os("FUZZ_WRITE_SEEDS").is_some();
    for (target, name, data) in fuzzing::generated_seeds() {
        let path = fuzz_dir().join("corpus").join(target).join(&name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap_or(Path::new("."))).unwrap();
            std::fs::write(&path, &data).unwrap();
        }
        let on_disk = std::fs::read(&path).unwrap_or_default();
        assert!(
            on_disk == data,
            "{} is missing or stale: FUZZ_WRITE_SEEDS=1 cargo test -p tollgate-edge-core --test fuzz_corpus",
            path.display()
        );
    }
}

/// The properties are not vacuous: the fixture tokens verify, the rogue key's does not, and
/// the structured seeds reach acceptance and every kind of tampering.
#[test]
fn the_fixture_world_accepts_and_refuses() {
    for key in FixtureKey::ALL {
        let r = fuzzing::verify_fixture(&fuzzing::good_token(key));
        assert_eq!(r.is_ok(), key.in_jwks(), "{key:?}: {r:?}");
    }
    let mut accepted = 0;
    let mut tampers = std::collections::BTreeSet::new();
    for (target, name, data) in fuzzing::generated_seeds() {
        if target != "jwt_verify" {
            continue;
        }
        let case = fuzzing::verify_case(&data).unwrap();
        let ok = fuzzing::verify_fixture(&case.token).is_ok();
        assert_eq!(
            ok,
            name.starts_with("valid-")
                || case.tamper != 0 && case.key.in_jwks() && !name.starts_with("hs256"),
            "{name}"
        );
        accepted += usize::from(ok);
        if let Some(t) = &case.tampered {
            assert_ne!(t, &case.token, "{name}");
            assert!(fuzzing::verify_fixture(t).is_err(), "{name}");
            tampers.insert(case.tamper);
        }
    }
    assert!(accepted >= 5);
    assert_eq!(tampers.len(), 7, "every tampering mode has a seed");
}
