//! The JavaScript examples in `docs/clients.md` that the browser tests run are the files in
//! `docs/examples/`, byte for byte: a fenced `javascript` block whose first line is a comment
//! naming `docs/examples/<file>` must equal that file, and every file there must have its block.
//! So the documented code cannot drift from the tested code (`tests/browser/reconnect.rs`). No
//! server is started.

use std::collections::BTreeMap;

use crate::helpers::{repository_file, repository_text};

/// The document that shows the examples.
const DOCUMENT: &str = "docs/clients.md";
/// The folder of the example files, relative to the repository.
const EXAMPLES: &str = "docs/examples";

#[test]
fn javascript_examples_in_the_client_docs_are_the_tested_files() {
    let blocks = marked_blocks(&repository_text(DOCUMENT));
    let mut files: Vec<String> = std::fs::read_dir(repository_file(EXAMPLES))
        .expect("docs/examples is readable")
        .map(|entry| {
            let name = entry.expect("directory entry").file_name();
            format!("{EXAMPLES}/{}", name.to_string_lossy())
        })
        .filter(|path| path.ends_with(".js"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no example in {EXAMPLES}");
    assert_eq!(
        blocks.keys().collect::<Vec<_>>(),
        files.iter().collect::<Vec<_>>(),
        "each file in {EXAMPLES} once as a marked block in {DOCUMENT}, and no other marked block"
    );
    for (path, block) in &blocks {
        let file = repository_text(path);
        if *block != file {
            let line = block
                .lines()
                .zip(file.lines())
                .position(|(documented, tested)| documented != tested)
                .unwrap_or_else(|| block.lines().count().min(file.lines().count()));
            panic!(
                "the block in {DOCUMENT} that names {path} differs from the file, first at its \
                 line {}: copy the file into the block",
                line + 1
            );
        }
    }
}

/// The fenced `javascript` blocks whose first line is a comment naming a file under
/// [`EXAMPLES`], by that path; each block's text with its final line break, as a file has it.
fn marked_blocks(markdown: &str) -> BTreeMap<String, String> {
    let marker = format!("// {EXAMPLES}/");
    let mut blocks = BTreeMap::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        if line.trim_end() != "```javascript" {
            continue;
        }
        let body: Vec<&str> = lines.by_ref().take_while(|line| *line != "```").collect();
        let Some(named) = body.first().and_then(|first| first.strip_prefix(&marker)) else {
            continue;
        };
        let name: String = named
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != ':')
            .collect();
        let path = format!("{EXAMPLES}/{name}");
        let text = body.iter().map(|line| format!("{line}\n")).collect();
        assert!(
            blocks.insert(path.clone(), text).is_none(),
            "{DOCUMENT} shows {path} twice"
        );
    }
    blocks
}
