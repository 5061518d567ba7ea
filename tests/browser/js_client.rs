//! The JavaScript client's unit tests (`clients/js/test`, Node's built-in runner), run as part of
//! `cargo test` so that the README's one test command covers them: with `node` (20 or later), and
//! again with Node 22 when it is there (the client's supported Node). They need no browser.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::{ci, node_22};

#[test]
fn the_javascript_client_passes_its_unit_tests() {
    unit_tests_pass_with(Path::new("node"));
}

#[test]
fn the_javascript_client_passes_its_unit_tests_in_node_22() {
    if let Some(node) = node_22() {
        unit_tests_pass_with(&node);
    }
}

fn unit_tests_pass_with(node: &Path) {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = Command::new(node)
        .arg("--test")
        .current_dir(repository.join("clients/js"))
        .stdin(Stdio::null())
        .output();
    let output = match run {
        Ok(output) => output,
        Err(error) => {
            assert!(
                !ci::is_ci(),
                "{} is needed under CI: {error}",
                node.display()
            );
            eprintln!("skipped: the JavaScript client's unit tests need node ({error})");
            return;
        }
    };
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "node --test (in clients/js) failed:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        report
            .lines()
            .any(|line| line.starts_with("# pass ") && line != "# pass 0"),
        "no test ran:\n{report}"
    );
}

#[test]
fn the_javascript_client_has_the_servers_version() {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |file: &str| std::fs::read_to_string(repository.join(file)).expect(file);
    let package: serde_json::Value =
        serde_json::from_str(&read("clients/js/package.json")).expect("package.json is JSON");
    assert_eq!(
        package["version"],
        env!("CARGO_PKG_VERSION"),
        "clients/js/package.json"
    );
    let declared = format!("export const VERSION = '{}';", env!("CARGO_PKG_VERSION"));
    assert!(
        read("clients/js/push-client.js").contains(&declared),
        "push-client.js declares {declared}"
    );
}
