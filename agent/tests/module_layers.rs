//! The agent's top-level modules form layers: no module imports one that imports it back
//! (directly or through others). This test reads `src/**.rs`, collects each top-level module's
//! uses of another (`crate::x`, `super::x` reaching the crate root, `use crate::{x, y}`), and
//! fails on any cycle, naming it and one file behind each edge. Test code counts too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of `file` relative to `src` (`routes/mod.rs` → [routes],
/// `forward/tcp.rs` → [forward, tcp]); None for the crate roots.
fn module_path(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?.to_owned();
    if parts.is_empty() && (stem == "lib" || stem == "main") {
        return None;
    }
    if stem != "mod" {
        parts.push(stem);
    }
    Some(parts)
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules `code` (of the module at `path`) refers to.
fn uses(path: &[String], code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let add_group = |rest: &str, out: &mut BTreeSet<String>| {
        // `{a::x, b}`: the first identifier of each item.
        if let Some(inner) = rest.strip_prefix('{') {
            let inner = &inner[..inner.find('}').unwrap_or(inner.len())];
            for item in inner.split(',') {
                let id = ident_at(item.trim());
                if !id.is_empty() && id != "self" {
                    out.insert(id.to_owned());
                }
            }
        } else {
            let id = ident_at(rest);
            if !id.is_empty() {
                out.insert(id.to_owned());
            }
        }
    };
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let before = &rest[..i];
            let after = &rest[i + "crate::".len()..];
            // `gatelet_agent_api::...` or `some_crate::` are other crates.
            if !before.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                add_group(after, &mut out);
            }
            rest = after;
        }
        let mut rest = line;
        while let Some(i) = rest.find("super::") {
            let before = &rest[..i];
            if before.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                rest = &rest[i + "super::".len()..];
                continue;
            }
            let mut after = &rest[i..];
            let mut depth = 0;
            while let Some(a) = after.strip_prefix("super::") {
                depth += 1;
                after = a;
            }
            if depth >= path.len() {
                add_group(after, &mut out);
            }
            rest = after;
        }
    }
    out
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let tops: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_path(&src, f))
        .filter_map(|p| p.first().cloned())
        .collect();
    assert!(
        tops.contains("routes") && tops.contains("forward"),
        "{tops:?}"
    );
    // edges[a][b] = a file of `a` that uses `b`.
    let mut edges: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    for f in &files {
        let Some(path) = module_path(&src, f) else {
            continue;
        };
        let code = std::fs::read_to_string(f).expect("source file");
        let from = path[0].clone();
        for to in uses(&path, &code) {
            if to != from && tops.contains(&to) {
                edges
                    .entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_insert_with(|| f.strip_prefix(&src).unwrap_or(f).to_path_buf());
            }
        }
    }
    // A depth-first search from every module; a back edge is a cycle.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeMap<String, PathBuf>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        cycles: &mut Vec<String>,
    ) {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(m.to_owned());
            let described: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("{} -> {} ({})", w[0], w[1], edges[&w[0]][&w[1]].display()))
                .collect();
            cycles.push(described.join(", "));
            return;
        }
        if done.contains(m) {
            return;
        }
        stack.push(m.to_owned());
        if let Some(next) = edges.get(m) {
            for n in next.keys() {
                visit(n, edges, stack, done, cycles);
            }
        }
        stack.pop();
        done.insert(m.to_owned());
    }
    let mut cycles = Vec::new();
    let mut done = BTreeSet::new();
    for m in &tops {
        visit(m, &edges, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(
        cycles.is_empty(),
        "import cycles between the agent's modules:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_scanner_sees_crate_super_and_grouped_uses() {
    let path = vec!["forward".to_owned(), "tcp".to_owned()];
    let code = "use crate::wol::Waker;\n\
                use crate::{http, target::Target};\n\
                let x = super::super::routes::Settings::new(ip);\n\
                use super::RouteCounters;\n\
                // crate::ignored in a comment\n\
                use gatelet_agent_api::control;\n";
    let got = uses(&path, code);
    let want: BTreeSet<String> = ["wol", "http", "target", "routes"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
}
