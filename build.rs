//! The build keeps the layers (docs/architecture.md). Cargo already refuses an upward import: each layer is a
//! crate of the workspace (`crates/model`, `storage`, `cluster`, `app`, `front`) that depends only on the
//! ones below it. This script checks what cargo cannot see, and refuses to build when
//!
//! - the top-level modules of one layer import each other in a circle (`crate::x` paths, doc links
//!   included: a doc link is a dependency too), or
//! - a layer names a crate it must not use outside comments (the model does no I/O; the application
//!   knows no front end's socket types), or names a layer above it in its text (a path in a comment
//!   that would not compile as code).
//!
//! No dependency: this runs before anything compiles.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const LAYERS: &[&str] = &["model", "storage", "cluster", "app", "front"];

/// Crates (or paths) each layer must not name, with why.
const FORBIDDEN: &[(&str, &[&str], &str)] = &[
    (
        "model",
        &["socketioxide", "axum::", "redis::", "reqwest", "tokio::net", "object_store", "hyper::", "jsonwebtoken"],
        "the model does no I/O and knows no transport",
    ),
    ("storage", &["socketioxide", "axum::", "jsonwebtoken", "hyper::"], "storage knows no clients, tokens or HTTP"),
    ("cluster", &["axum::", "jsonwebtoken", "reqwest"], "cluster plumbing knows no HTTP or tokens"),
    ("app", &["socketioxide", "axum::extract::ws"], "the application knows no front end's socket types"),
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let mut problems = Vec::new();
    for (rank, layer) in LAYERS.iter().enumerate() {
        let src = PathBuf::from("crates").join(layer).join("src");
        println!("cargo:rerun-if-changed={}", src.display());
        let mut files = Vec::new();
        walk(&src, &mut files);
        files.sort();
        // module -> the modules of this layer it names, with one place that does.
        let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for file in &files {
            let Ok(text) = fs::read_to_string(file) else { continue };
            let rel = file.strip_prefix(&src).unwrap_or(file);
            let parts: Vec<String> =
                rel.iter().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
            let module = match parts.first().map(String::as_str) {
                Some("lib") | None => String::new(),
                Some(m) => m.to_string(),
            };
            for (l, forbidden, why) in FORBIDDEN {
                if l != layer {
                    continue;
                }
                for f in *forbidden {
                    let hit = text.lines().position(|line| !line.trim_start().starts_with("//") && mentions(line, f));
                    if let Some(line) = hit {
                        problems.push(format!("{}:{}: names `{f}`: {why}", file.display(), line + 1));
                    }
                }
            }
            for (line_no, line) in text.lines().enumerate() {
                for above in &LAYERS[rank + 1..] {
                    if mentions(line, &format!("rtg_{above}::")) || mentions(line, &format!("crate::{above}::")) {
                        problems.push(format!(
                            "{}:{}: `{layer}` names the layer `{above}` above it (bottom up: {})",
                            file.display(),
                            line_no + 1,
                            LAYERS.join(" < ")
                        ));
                    }
                }
                for target in crate_paths(line) {
                    let Some(to) = target.first() else { continue };
                    if *to != module && !module.is_empty() {
                        edges
                            .entry(module.clone())
                            .or_default()
                            .entry(to.clone())
                            .or_insert_with(|| format!("{}:{}", file.display(), line_no + 1));
                    }
                }
            }
        }
        // Only edges between this layer's own modules (a `crate::x` that is not a module, an item of lib.rs,
        // has no edges of its own and closes no circle).
        for cycle in cycles(&edges) {
            let mut via = Vec::new();
            for (i, from) in cycle.iter().enumerate() {
                let to = &cycle[(i + 1) % cycle.len()];
                if let Some(at) = edges.get(from).and_then(|e| e.get(to)) {
                    via.push(format!("  {layer}::{from} -> {layer}::{to} at {at}"));
                }
            }
            let names: Vec<String> = cycle.iter().map(|m| format!("{layer}::{m}")).collect();
            problems.push(format!("import cycle: {}\n{}", names.join(" -> "), via.join("\n")));
        }
    }
    if !problems.is_empty() {
        eprintln!("the layers of docs/architecture.md are broken:\n");
        for p in &problems {
            eprintln!("{p}");
        }
        panic!("{} layering problem(s): see above", problems.len());
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Does `line` name `what` as a path (not inside a longer identifier)?
fn mentions(line: &str, what: &str) -> bool {
    line.match_indices(what).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// The paths `crate::a::b...` named on a line, as their segments; a group `crate::{a::b, c}` gives one
/// path per member.
fn crate_paths(line: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (i, _) in line.match_indices("crate::") {
        if line[..i].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &line[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(segments(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            out.push(segments(&item));
        } else {
            out.push(segments(rest));
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

fn segments(path: &str) -> Vec<String> {
    path.trim()
        .split("::")
        .take(2)
        .map(|s| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>())
        .take_while(|s| !s.is_empty())
        .collect()
}

type Node = String;

/// Every elementary circle found by a depth-first search (one per back edge), each as its modules in order.
fn cycles(edges: &BTreeMap<Node, BTreeMap<Node, String>>) -> Vec<Vec<Node>> {
    let mut found = Vec::new();
    let mut done: BTreeSet<Node> = BTreeSet::new();
    for start in edges.keys() {
        let mut stack: Vec<Node> = Vec::new();
        visit(start, edges, &mut stack, &mut done, &mut found);
    }
    found
}

fn visit(
    n: &Node,
    edges: &BTreeMap<Node, BTreeMap<Node, String>>,
    stack: &mut Vec<Node>,
    done: &mut BTreeSet<Node>,
    found: &mut Vec<Vec<Node>>,
) {
    if done.contains(n) {
        return;
    }
    if let Some(at) = stack.iter().position(|s| s == n) {
        found.push(stack[at..].to_vec());
        return;
    }
    stack.push(n.clone());
    if let Some(next) = edges.get(n) {
        for m in next.keys() {
            visit(m, edges, stack, done, found);
        }
    }
    stack.pop();
    done.insert(n.clone());
}
