//! The build keeps the layers (docs/architecture.md): it reads every `crate::` path under `src/` and refuses
//! to build when
//!
//! - a layer names one above it (the layers, bottom up: `model`, `storage`, `cluster`, `app`, `front`, then
//!   `startup`, `main` and `lib`, which may name everything),
//! - the modules of a layer (`app::events`, `app::proxy`, ...) import each other in a circle, or
//! - a layer names a crate it must not use (the model does no I/O; nothing under the front ends knows
//!   socketioxide's or axum's socket types).
//!
//! `crate::` paths are read as text, comments included (a doc link is a dependency too), so the rules hold
//! for what a reader sees; forbidden crates are looked for outside comments. No dependency: this runs
//! before the crate compiles.

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
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=build.rs");
    let mut files = Vec::new();
    walk(Path::new("src"), &mut files);
    files.sort();
    let mut problems = Vec::new();
    // (layer, module) -> the (layer, module)s it names, with one file that does.
    let mut edges: BTreeMap<(usize, String), BTreeMap<(usize, String), String>> = BTreeMap::new();
    for file in &files {
        let Ok(text) = fs::read_to_string(file) else { continue };
        let rel = file.strip_prefix("src").unwrap_or(file);
        let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
        let Some(rank) = LAYERS.iter().position(|l| *l == parts[0]) else { continue };
        let module =
            if parts.len() > 2 || (parts.len() == 2 && parts[1] != "mod") { parts[1].clone() } else { String::new() };
        for (layer, forbidden, why) in FORBIDDEN {
            if *layer != LAYERS[rank] {
                continue;
            }
            for f in *forbidden {
                if let Some(line) = text.lines().position(|l| !l.trim_start().starts_with("//") && mentions(l, f)) {
                    problems.push(format!("{}:{}: names `{f}`: {why}", file.display(), line + 1));
                }
            }
        }
        for (line_no, line) in text.lines().enumerate() {
            for target in crate_paths(line) {
                let (Some(t_layer), t_module) = (target.first(), target.get(1)) else { continue };
                let Some(t_rank) = LAYERS.iter().position(|l| l == t_layer) else {
                    if t_layer == "startup" {
                        problems.push(format!(
                            "{}:{}: names `crate::startup`: only main and lib may",
                            file.display(),
                            line_no + 1
                        ));
                    }
                    continue;
                };
                if t_rank > rank {
                    problems.push(format!(
                        "{}:{}: `{}` names `crate::{}`, a layer above it (bottom up: {})",
                        file.display(),
                        line_no + 1,
                        LAYERS[rank],
                        target.join("::"),
                        LAYERS.join(" < ")
                    ));
                }
                if t_rank == rank {
                    let to = t_module.cloned().unwrap_or_default();
                    if to != module && !to.is_empty() && !module.is_empty() {
                        edges
                            .entry((rank, module.clone()))
                            .or_default()
                            .entry((t_rank, to))
                            .or_insert_with(|| format!("{}:{}", file.display(), line_no + 1));
                    }
                }
            }
        }
    }
    for cycle in cycles(&edges) {
        let names: Vec<String> = cycle.iter().map(|(r, m)| format!("{}::{m}", LAYERS[*r])).collect();
        let mut via = Vec::new();
        for (i, from) in cycle.iter().enumerate() {
            let to = &cycle[(i + 1) % cycle.len()];
            if let Some(at) = edges.get(from).and_then(|e| e.get(to)) {
                via.push(format!("  {}::{} -> {}::{} at {at}", LAYERS[from.0], from.1, LAYERS[to.0], to.1));
            }
        }
        problems.push(format!("import cycle: {}\n{}", names.join(" -> "), via.join("\n")));
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

/// The paths `crate::a::b...` named on a line, as their first two segments; a group `crate::{a::b, c}`
/// gives one path per member.
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

type Node = (usize, String);

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
