//! The auth server's module layering (docs/architecture.md, "Auth server module map"): the
//! lower layers never reach up. `grants/`, `store/`, `state.rs` and the domain modules they
//! use do not import the HTTP surface (`http/`) or the one-shot jobs (`jobs/`), and the
//! store does not import the grants or the state. Read from the source, so that a new
//! `use crate::http::...` (in any of its forms) fails here rather than in a review.

use std::path::{Path, PathBuf};

/// (files or folders under `src/`, modules they must not import).
const RULES: &[(&[&str], &[&str])] = &[
    (
        &["grants", "state.rs", "key_rotation.rs", "telemetry.rs"],
        &["http", "jobs"],
    ),
    (&["store"], &["http", "jobs", "grants", "state"]),
];

/// (file under `src/`, module) pairs allowed despite [`RULES`], each with its reason.
const ALLOWED: &[(&str, &str)] = &[
    // The conformance suite (compiled for tests only) checks that replicas sharing a store
    // agree on the signing keys, which needs the state that loads them.
    ("store/conformance.rs", "state"),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for e in entries {
            rust_files(&e, out);
        }
    } else if p.extension().is_some_and(|e| e == "rs") {
        out.push(p.to_path_buf());
    }
}

/// How many `super::` reach the crate root from the file at `rel` (a path under `src/`):
/// `grants/mod.rs` is `crate::grants` (1), `grants/pkce.rs` is `crate::grants::pkce` (2).
fn depth(rel: &Path) -> usize {
    let comps: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    match comps.last().map(String::as_str) {
        Some("mod.rs") | Some("lib.rs") | Some("main.rs") => comps.len() - 1,
        _ => comps.len(),
    }
}

/// The code of a source file without its comments (line, doc and block comments), so that a
/// doc link to `crate::jobs` is not an import. String literals are kept (none of the paths
/// checked here appears in one).
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while !rest.is_empty() {
        if rest.starts_with("//") {
            let end = rest.find('\n').unwrap_or(rest.len());
            rest = &rest[end..];
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(rest.len(), |i| i + 2);
            rest = &rest[end..];
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The references to the crate-root module `module` in `code` of a file `depth` modules
/// below the root: `crate::module`, `crate::{.., module, ..}`, `tollgate_authserver::module`
/// and `super::super::module` with enough `super`s to reach the root.
fn references(code: &str, depth: usize, module: &str) -> Vec<String> {
    let compact: String = code.split_whitespace().collect::<Vec<_>>().join("");
    let mut found = Vec::new();
    for root in ["crate::", "tollgate_authserver::"] {
        let mut from = 0;
        while let Some(i) = compact[from..].find(root) {
            let at = from + i + root.len();
            from = at;
            let tail = &compact[at..];
            let named = if let Some(group) = tail.strip_prefix('{') {
                // A grouped import: the names at its top level.
                let mut level = 0usize;
                let mut names = Vec::new();
                let mut cur = String::new();
                for c in group.chars() {
                    match c {
                        '{' => level += 1,
                        '}' if level == 0 => break,
                        '}' => level -= 1,
                        ',' if level == 0 => names.push(std::mem::take(&mut cur)),
                        _ => cur.push(c),
                    }
                }
                names.push(cur);
                names.iter().any(|n| first_segment(n) == module)
            } else {
                first_segment(tail) == module
            };
            if named {
                found.push(format!("{root}{}", &tail[..tail.len().min(60)]));
            }
        }
    }
    let supers = "super::".repeat(depth.max(1));
    let mut from = 0;
    while let Some(i) = compact[from..].find(&supers) {
        let mut at = from + i + supers.len();
        // More `super`s than the file's depth: an inline module (`mod tests`) reaching up.
        while compact[at..].starts_with("super::") {
            at += "super::".len();
        }
        from = at;
        if first_segment(&compact[at..]) == module {
            found.push(format!(
                "{supers}{}",
                &compact[at..compact.len().min(at + 60)]
            ));
        }
    }
    found
}

fn first_segment(path: &str) -> &str {
    let end = path
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(path.len());
    &path[..end]
}

#[test]
fn lower_layers_do_not_import_upper_layers() {
    let src = src();
    let mut violations = Vec::new();
    let mut checked = 0;
    for (roots, forbidden) in RULES {
        for root in *roots {
            let mut files = Vec::new();
            rust_files(&src.join(root), &mut files);
            assert!(!files.is_empty(), "no Rust file under src/{root}");
            for f in files {
                let rel = f.strip_prefix(&src).unwrap().to_path_buf();
                let code = strip_comments(&std::fs::read_to_string(&f).unwrap());
                checked += 1;
                for m in *forbidden {
                    if ALLOWED.contains(&(rel.to_string_lossy().as_ref(), *m)) {
                        continue;
                    }
                    for r in references(&code, depth(&rel), m) {
                        violations.push(format!("src/{}: {r}", rel.display()));
                    }
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} files checked");
    assert!(
        violations.is_empty(),
        "lower layers import upper ones (see docs/architecture.md, \"Auth server module map\"):\n{}",
        violations.join("\n")
    );
}

/// The check itself: each form of import is caught, comments and look-alikes are not.
#[test]
fn the_layering_check_catches_each_form_of_import() {
    let hit =
        |code: &str, depth: usize| !references(&strip_comments(code), depth, "http").is_empty();
    assert!(hit("use crate::http::authorize::valid_pkce_string;", 2));
    assert!(hit("use crate :: http;", 2));
    assert!(hit("let r = crate::http::router(s);", 1));
    assert!(hit("use crate::{error::OAuthError, http::SharedState};", 2));
    assert!(hit("use crate::{\n    form::Params,\n    http,\n};", 2));
    assert!(hit("use tollgate_authserver::http::Listener;", 2));
    assert!(hit("use super::http::authorize;", 1));
    assert!(hit("use super::super::http::authorize;", 2));
    assert!(hit("mod tests { use super::super::super::http::x; }", 2));
    assert!(
        !hit("use super::super::http::authorize;", 3),
        "a sibling module"
    );
    assert!(!hit("use super::http;", 2), "a sibling module");
    assert!(!hit("// use crate::http::authorize;", 2));
    assert!(!hit("/// See [`crate::http::router`].", 2));
    assert!(!hit("/* crate::http */ use crate::store::Store;", 2));
    assert!(!hit("use crate::https_only::x;", 2));
    assert!(
        !hit("use crate::{form::{http, Params}};", 2),
        "nested, not the root module"
    );
    assert_eq!(depth(Path::new("grants/mod.rs")), 1);
    assert_eq!(depth(Path::new("grants/pkce.rs")), 2);
    assert_eq!(depth(Path::new("store/redis/clients.rs")), 3);
    assert_eq!(depth(Path::new("state.rs")), 1);
}
