//! Every method of the store's traits is called by the shared suite (which runs each test on
//! SQLite and on PostgreSQL). A method added without a suite test fails here, by name.

use std::collections::BTreeSet;
use std::path::Path;

/// The methods declared in the `pub trait ...Store` blocks of one source file.
fn trait_methods(source: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in source.lines() {
        if let Some(rest) = line.strip_prefix("pub trait ") {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if name.ends_with("Store") {
                current = Some(name);
            }
            continue;
        }
        if line == "}" {
            current = None;
            continue;
        }
        let Some(tr) = &current else { continue };
        let t = line.trim_start();
        let decl = t.strip_prefix("async fn ").or_else(|| t.strip_prefix("fn "));
        if let Some(decl) = decl {
            let name: String = decl.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            out.push((tr.clone(), name));
        }
    }
    out
}

#[test]
fn the_suite_calls_every_store_method() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut methods = Vec::new();
    for entry in std::fs::read_dir(root.join("src")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            methods.extend(trait_methods(&std::fs::read_to_string(&path).unwrap()));
        }
    }
    let traits: BTreeSet<&str> = methods.iter().map(|(t, _)| t.as_str()).collect();
    assert!(methods.len() > 100 && traits.contains("Store") && traits.contains("LedgerStore"), "{traits:?}");
    let mut suite = String::new();
    for entry in std::fs::read_dir(root.join("tests/suite")).unwrap() {
        suite.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    let missing: Vec<String> =
        methods.iter().filter(|(_, m)| !suite.contains(&format!(".{m}("))).map(|(t, m)| format!("{t}::{m}")).collect();
    assert!(missing.is_empty(), "store methods no suite test calls (add one, on both backends): {missing:?}");
    println!("{} methods of {} traits, all called by the suite", methods.len(), traits.len());
}
