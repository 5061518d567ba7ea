//! The settings table in `docs/configuration.md` and the keys of `.env.example` agree with the
//! code (`config::Settings`): every environment variable once, the same defaults, nothing that is
//! not a setting. No server is started.

use std::collections::{BTreeMap, BTreeSet};

use clap::{Args, Command};
use websocket_sse_server::config::Settings;

use crate::helpers::repository_text;

/// The header row of the settings table in `docs/configuration.md`.
const TABLE_HEADER: &str = "| variable | default | meaning |";

/// Keys `.env.example` may name although they are not server settings: the client commands read
/// them from the environment (`push --api-key`, `listen --token`).
const CLIENT_KEYS: [&str; 2] = ["PUSH_API_KEY", "LISTEN_TOKEN"];

/// Default cells that mean "no default" (or an empty or generated one).
const NO_DEFAULT: [&str; 2] = ["(none)", "(random)"];

/// One setting as the code declares it.
struct CodeSetting {
    /// The long flag, without `--`.
    long: Option<String>,
    /// The default values joined by `,`; `None` when there is none or it is empty.
    default: Option<String>,
}

/// One row of the documented table, for one variable.
struct DocRow {
    /// 1-based line number in `docs/configuration.md`.
    line: usize,
    /// The default cell, normalized; `None` for `(none)` and `(random)`.
    default: Option<String>,
}

/// Every server setting, by environment variable, as clap sees it.
fn code_settings() -> BTreeMap<String, CodeSetting> {
    let command = Settings::augment_args(Command::new("t"));
    let mut settings = BTreeMap::new();
    for arg in command.get_arguments() {
        let Some(env) = arg.get_env() else { continue };
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|value| value.to_string_lossy().into_owned())
            .collect();
        let default = Some(defaults.join(",")).filter(|joined| !joined.is_empty());
        let setting = CodeSetting {
            long: arg.get_long().map(str::to_owned),
            default,
        };
        let name = env.to_string_lossy().into_owned();
        assert!(
            settings.insert(name.clone(), setting).is_none(),
            "{name} is the variable of two settings"
        );
    }
    assert!(
        !settings.is_empty(),
        "no setting has an environment variable"
    );
    settings
}

/// Splits a markdown table row into its cells, unescaping `\|`.
fn cells(row: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut chars = row.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cell.push('|');
                chars.next();
            }
            '|' => cells.push(std::mem::take(&mut cell)),
            _ => cell.push(c),
        }
    }
    cells.push(cell);
    // A row starts and ends with `|`: drop the empty text outside them.
    if cells.first().is_some_and(|first| first.trim().is_empty()) {
        cells.remove(0);
    }
    if cells.last().is_some_and(|last| last.trim().is_empty()) {
        cells.pop();
    }
    cells.iter().map(|cell| cell.trim().to_owned()).collect()
}

/// The backticked names of a first cell: `` `JWT_AUDIENCE`, `JWT_ISSUER` `` gives both.
fn variable_names(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn is_variable_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_uppercase())
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn normalize_default(cell: &str) -> Option<String> {
    let cell = cell.trim();
    if NO_DEFAULT.contains(&cell) {
        return None;
    }
    Some(cell.replace('`', "").trim().to_owned()).filter(|value| !value.is_empty())
}

/// The rows of the settings table, by variable; a variable documented twice appears twice.
fn documented_rows(text: &str) -> Vec<(String, DocRow)> {
    let lines: Vec<&str> = text.lines().collect();
    let headers: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].trim() == TABLE_HEADER)
        .collect();
    assert_eq!(
        headers.len(),
        1,
        "docs/configuration.md must hold exactly one table headed `{TABLE_HEADER}`"
    );
    let mut rows = Vec::new();
    // Skip the header and the `| --- |` line under it; the table ends at the first other line.
    for (i, line) in lines.iter().enumerate().skip(headers[0] + 2) {
        if !line.trim_start().starts_with('|') {
            break;
        }
        let line_number = i + 1;
        let cells = cells(line);
        assert_eq!(
            cells.len(),
            3,
            "docs/configuration.md:{line_number}: expected 3 cells (variable, default, meaning), \
             found {}: {line}",
            cells.len()
        );
        assert!(
            !cells[2].is_empty(),
            "docs/configuration.md:{line_number}: the meaning is empty"
        );
        let names = variable_names(&cells[0]);
        assert!(
            !names.is_empty() && names.iter().all(|name| is_variable_name(name)),
            "docs/configuration.md:{line_number}: the first cell must name variables in \
             backticks, such as `PORT`: {line}"
        );
        for name in names {
            let row = DocRow {
                line: line_number,
                default: normalize_default(&cells[1]),
            };
            rows.push((name, row));
        }
    }
    rows
}

/// A default for a failure message: `` `value` `` or `none`.
fn show(default: Option<&str>) -> String {
    default.map_or_else(|| "none".to_owned(), |value| format!("`{value}`"))
}

#[test]
fn configuration_table_matches_the_settings() {
    let code = code_settings();
    let rows = documented_rows(&repository_text("docs/configuration.md"));
    let mut problems = Vec::new();

    let mut documented: BTreeMap<&str, Vec<&DocRow>> = BTreeMap::new();
    for (name, row) in &rows {
        documented.entry(name.as_str()).or_default().push(row);
    }
    for (name, setting) in &code {
        match documented.get(name.as_str()).map(Vec::as_slice) {
            None | Some([]) => problems.push(format!(
                "{name}: a setting (--{}) missing from the table",
                setting.long.as_deref().unwrap_or("?")
            )),
            Some([row]) => {
                if row.default != setting.default {
                    problems.push(format!(
                        "{name}: docs/configuration.md:{} gives the default as {}, the code has {}",
                        row.line,
                        show(row.default.as_deref()),
                        show(setting.default.as_deref())
                    ));
                }
            }
            Some(several) => problems.push(format!(
                "{name}: documented {} times (lines {})",
                several.len(),
                several
                    .iter()
                    .map(|row| row.line.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
    for (name, rows) in &documented {
        if !code.contains_key(*name) {
            problems.push(format!(
                "{name}: documented at docs/configuration.md:{} but not a setting in the code",
                rows[0].line
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md and config::Settings disagree:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn env_example_names_every_setting_and_nothing_else() {
    let code = code_settings();
    let text = repository_text(".env.example");
    let mut mentioned = BTreeSet::new();
    let mut problems = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let (commented, line) = match line.strip_prefix('#') {
            Some(rest) => (true, rest.trim_start()),
            None => (false, line),
        };
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if !is_variable_name(key) {
            continue;
        }
        mentioned.insert(key.to_owned());
        match code.get(key) {
            None if CLIENT_KEYS.contains(&key) => {}
            None => problems.push(format!(
                "{key}: named at .env.example:{} but not a setting",
                i + 1
            )),
            // An active line claims to show the default (the file says so at the top); a
            // commented one is an example.
            Some(setting) if !commented => {
                let value = Some(value.trim()).filter(|value| !value.is_empty());
                if value != setting.default.as_deref() {
                    problems.push(format!(
                        "{key}: .env.example:{} sets {}, the code's default is {}",
                        i + 1,
                        show(value),
                        show(setting.default.as_deref())
                    ));
                }
            }
            Some(_) => {}
        }
    }
    for name in code.keys() {
        if !mentioned.contains(name) {
            problems.push(format!(
                "{name}: a setting missing from .env.example (add `{name}=` or `# {name}=`)"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        ".env.example and config::Settings disagree:\n  {}",
        problems.join("\n  ")
    );
}

/// docs/configuration.md states the rule instead of listing every flag.
#[test]
fn every_flag_is_its_variable_in_lower_case() {
    for (name, setting) in code_settings() {
        let expected = name.to_ascii_lowercase().replace('_', "-");
        assert_eq!(
            setting.long.as_deref(),
            Some(expected.as_str()),
            "{name}: its flag is not --{expected}"
        );
    }
}
