//! The JavaScript client's unit tests (`clients/js/test`, Node's built-in runner), run as part of
//! `cargo test` so that the README's one test command covers them. They need `node` (20 or later)
//! only, not the browser.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::ci;

#[test]
fn the_javascript_client_passes_its_unit_tests() {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = Command::new("node")
        .args(["--test", "clients/js/test"])
        .current_dir(repository)
        .stdin(Stdio::null())
        .output();
    let output = match run {
        Ok(output) => output,
        Err(error) => {
            assert!(!ci::is_ci(), "node is needed under CI: {error}");
            eprintln!("skipped: the JavaScript client's unit tests need node ({error})");
            return;
        }
    };
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "node --test clients/js/test failed:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        report
            .lines()
            .any(|line| line.starts_with("# pass ") && line != "# pass 0"),
        "no test ran:\n{report}"
    );
}
