//! The crate's layering, checked in the spirit of rust-analyzer's tidy tests: every `crate::…` (and
//! `super::…`) path in `src/` is an edge from the file that writes it to the module it names. Two
//! rules hold for every edge:
//!
//! 1. Between top-level modules, edges only go down the [`LAYERS`] table (written down, with the
//!    reasons, in ARCHITECTURE.md): a module may use modules of lower layers only.
//! 2. Between files, there is no cycle at all (the same rule as `../shared/tools/import-cycles.py`:
//!    a file's edge to its own parent module through `super::` does not count).
//!
//! Comments and `#[cfg(test)]` modules are left out: tests may reach for any helper.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules, lowest layer first. A module may use only modules of lower layers.
const LAYERS: &[&[&str]] = &[
    // The shared vocabulary: the wire contract, positions, reasons, transports.
    &["protocol"],
    // Leaves: counters, history rules, log output, shutdown state, the .env reader, the clock,
    // the registry of HTTP connections, the listener's TLS certificate.
    &[
        "metrics",
        "history",
        "logging",
        "lifecycle",
        "dotenv",
        "clock",
        "admission",
        "tls",
    ],
    // This node's connections and delivery; the webhooks sent to the backend.
    &["hub", "webhook"],
    // Events waiting for a client's acknowledgement (reported through webhooks).
    &["acks"],
    // Settings, parsed into the types of the layers below.
    &["config"],
    // Routing across nodes; credentials; rate limits; the health probe.
    &["broker", "auth", "rate_limit", "healthcheck", "origin"],
    // What handlers share; the HTTP error type; the client subcommands.
    &["state", "error", "client"],
    // The HTTP API, the client transports, the console, the API documentation.
    &["api", "transport", "console", "openapi", "js_client"],
    // The route table.
    &["routes"],
    // The server and the command line.
    &["server", "cli"],
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, as its module path (`hub/mod.rs` → `["hub"]`).
fn modules(dir: &Path, root: &Path, found: &mut BTreeMap<Vec<String>, PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            modules(&path, root, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            let relative = path.strip_prefix(root).expect("under src");
            let mut parts: Vec<String> = relative
                .with_extension("")
                .components()
                .map(|part| part.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            found.insert(parts, path);
        }
    }
}

/// `text` without comments and `#[cfg(test)] mod … { … }` blocks.
fn code_of(text: &str) -> String {
    let mut code = String::with_capacity(text.len());
    for line in text.lines() {
        let line = line.find("//").map_or(line, |at| &line[..at]);
        code.push_str(line);
        code.push('\n');
    }
    while let Some(start) = code.find("#[cfg(test)]") {
        let rest = &code[start..];
        let Some(open) = rest.find('{').filter(|open| rest[..*open].contains("mod ")) else {
            code.replace_range(start..start + "#[cfg(test)]".len(), "");
            continue;
        };
        let mut depth = 0;
        let mut end = code.len();
        for (index, c) in rest[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = start + open + index + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        code.replace_range(start..end, "");
    }
    code
}

/// The longest prefix of `path` that is a module file.
fn resolve(path: &[String], files: &BTreeMap<Vec<String>, PathBuf>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|length| path[..length].to_vec())
        .find(|prefix| files.contains_key(prefix))
}

/// The module paths a `crate::`/`super::` path expression names, expanding one level of braces:
/// `crate::a::{b, c::d}` names `a::b` and `a::c::d`.
fn paths_after(code: &str, marker: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    for (at, _) in code.match_indices(marker) {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[at + marker.len()..];
        let mut base = Vec::new();
        let mut rest = rest;
        loop {
            let word: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if word.is_empty() {
                break;
            }
            rest = &rest[word.len()..];
            base.push(word);
            match rest.strip_prefix("::") {
                Some(after) => rest = after,
                None => break,
            }
        }
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let mut path = base.clone();
                path.extend(
                    item.trim()
                        .split("::")
                        .map(str::trim)
                        .filter(|part| !part.is_empty() && *part != "self")
                        .map(str::to_owned),
                );
                paths.push(path);
            }
        } else {
            paths.push(base);
        }
    }
    paths
}

/// Every file's edges to other files.
fn edges() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let root = src();
    let mut files = BTreeMap::new();
    modules(&root, &root, &mut files);
    let mut edges = BTreeMap::new();
    for (module, path) in &files {
        let code = code_of(&std::fs::read_to_string(path).expect("readable source"));
        let is_dir_module = path.file_name().is_some_and(|name| name == "mod.rs");
        let parent: Vec<String> = if is_dir_module {
            module.clone()
        } else {
            module[..module.len().saturating_sub(1)].to_vec()
        };
        let mut targets = BTreeSet::new();
        for named in paths_after(&code, "crate::") {
            targets.extend(resolve(&named, &files));
        }
        for named in paths_after(&code, "super::") {
            let base = if is_dir_module {
                parent[..parent.len().saturating_sub(1)].to_vec()
            } else {
                parent.clone()
            };
            let full: Vec<String> = base.into_iter().chain(named).collect();
            if let Some(target) = resolve(&full, &files).filter(|target| *target != parent) {
                targets.insert(target);
            }
        }
        targets.remove(module);
        edges.insert(module.clone(), targets);
    }
    edges
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

#[test]
fn every_top_level_module_has_a_layer() {
    let unplaced: Vec<String> = edges()
        .keys()
        .filter_map(|module| module.first())
        .filter(|top| layer_of(top).is_none())
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules missing from LAYERS (tests/api/layering.rs) and ARCHITECTURE.md: {unplaced:?}"
    );
}

#[test]
fn top_level_modules_only_use_lower_layers() {
    let mut violations = Vec::new();
    for (from, targets) in edges() {
        let Some(from_top) = from.first() else {
            continue; // lib.rs, main.rs
        };
        for to in targets {
            let to_top = &to[0];
            if to_top == from_top {
                continue;
            }
            if let (Some(from_layer), Some(to_layer)) = (layer_of(from_top), layer_of(to_top))
                && to_layer >= from_layer
            {
                violations.push(format!(
                    "{} (layer {from_layer}) uses {} (layer {to_layer})",
                    from.join("::"),
                    to.join("::")
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "edges up or across the layering:\n{}",
        violations.join("\n")
    );
}

#[test]
fn no_file_takes_part_in_an_import_cycle() {
    let edges = edges();
    // Depth-first search with colours: an edge to a file on the current path closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        New,
        OnPath,
        Done,
    }
    fn visit(
        file: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        colours: &mut BTreeMap<Vec<String>, Colour>,
        path: &mut Vec<Vec<String>>,
        cycles: &mut Vec<String>,
    ) {
        colours.insert(file.clone(), Colour::OnPath);
        path.push(file.clone());
        for next in edges.get(file).into_iter().flatten() {
            match colours.get(next).copied().unwrap_or(Colour::New) {
                Colour::New => visit(next, edges, colours, path, cycles),
                Colour::OnPath => {
                    let start = path.iter().position(|step| step == next).unwrap_or(0);
                    let cycle: Vec<String> = path[start..]
                        .iter()
                        .chain(std::iter::once(next))
                        .map(|step| step.join("::"))
                        .collect();
                    cycles.push(cycle.join(" -> "));
                }
                Colour::Done => {}
            }
        }
        path.pop();
        colours.insert(file.clone(), Colour::Done);
    }
    let mut colours = BTreeMap::new();
    let mut cycles = Vec::new();
    for file in edges.keys() {
        if colours.get(file).copied().unwrap_or(Colour::New) == Colour::New {
            visit(file, &edges, &mut colours, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_checker_sees_edges() {
    // Guards against a parser that silently finds nothing.
    let edges = edges();
    let hub = edges.get(&vec!["hub".to_owned()]).expect("src/hub/mod.rs");
    assert!(hub.contains(&vec!["protocol".to_owned()]), "{hub:?}");
    let cluster = edges
        .get(&vec!["hub".to_owned(), "cluster".to_owned()])
        .expect("src/hub/cluster.rs");
    assert!(
        cluster.contains(&vec!["protocol".to_owned()]),
        "{cluster:?}"
    );
    assert!(
        !cluster.contains(&vec!["hub".to_owned()]),
        "super:: to the parent does not count"
    );
}
