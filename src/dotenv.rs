//! Reads a `.env` file with the rules of python-dotenv, which the seed's users write for.
//!
//! The usual Rust loader (dotenvy) refuses unquoted values with spaces, and the seed's own `.env`
//! has one (`LOG_FORMAT={time:YYYY-MM-DD HH:mm:ss} | {level} | {message}`), so this module parses:
//! `KEY=VALUE` lines, an optional `export ` prefix, blank lines and `#` comments; values in double
//! quotes (with `\n`, `\t`, `\"` and `\\` escapes), in single quotes (literal), or unquoted (the rest
//! of the line, trimmed, less a ` #` comment). Variables are not expanded.

use std::path::Path;

/// A line of a `.env` file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct DotenvError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// Parses `.env` text into its variables, in file order (a later duplicate wins).
pub fn parse(text: &str) -> Result<Vec<(String, String)>, DotenvError> {
    let mut pairs = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let error = |reason: &str| DotenvError {
            line: index + 1,
            reason: reason.to_owned(),
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| error("expected KEY=VALUE"))?;
        let key = key.trim();
        let valid_key = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !valid_key {
            return Err(error(&format!("{key:?} is not a variable name")));
        }
        let value = parse_value(value.trim()).map_err(error)?;
        if value.contains('\0') {
            return Err(error("values cannot contain a NUL character"));
        }
        pairs.push((key.to_owned(), value));
    }
    Ok(pairs)
}

fn parse_value(value: &str) -> Result<String, &'static str> {
    let mut chars = value.chars();
    match chars.next() {
        Some('"') => {
            let mut out = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '"' => return trailing_comment_only(chars.as_str()).map(|()| out),
                    '\\' => out.push(match chars.next() {
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some('r') => '\r',
                        Some(other) => other,
                        None => return Err("unterminated double-quoted value"),
                    }),
                    other => out.push(other),
                }
            }
            Err("unterminated double-quoted value")
        }
        Some('\'') => {
            let rest = chars.as_str();
            let end = rest.find('\'').ok_or("unterminated single-quoted value")?;
            trailing_comment_only(&rest[end + 1..]).map(|()| rest[..end].to_owned())
        }
        _ => {
            let end = value
                .char_indices()
                .find(|&(i, c)| c == '#' && value[..i].ends_with(char::is_whitespace))
                .map_or(value.len(), |(i, _)| i);
            Ok(value[..end].trim_end().to_owned())
        }
    }
}

fn trailing_comment_only(rest: &str) -> Result<(), &'static str> {
    let rest = rest.trim_start();
    if rest.is_empty() || rest.starts_with('#') {
        Ok(())
    } else {
        Err("unexpected text after the closing quote")
    }
}

/// Reads `path` if it exists and returns the variables for which `is_set` is false: the
/// environment wins over the file. A missing file is not an error.
pub fn load(
    path: &Path,
    is_set: impl Fn(&str) -> bool,
) -> Result<Vec<(String, String)>, DotenvError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(DotenvError {
                line: 0,
                reason: error.to_string(),
            });
        }
    };
    let mut pairs = parse(&text)?;
    pairs.retain(|(key, _)| !is_set(key));
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_seed_env_block_parses() {
        let text = "# Server\nHOST=0.0.0.0\nPORT=8080\n\nLOG_FORMAT={time:YYYY-MM-DD HH:mm:ss} | {level} | {message}\n";
        assert_eq!(
            parse(text).unwrap(),
            vec![
                ("HOST".into(), "0.0.0.0".into()),
                ("PORT".into(), "8080".into()),
                (
                    "LOG_FORMAT".into(),
                    "{time:YYYY-MM-DD HH:mm:ss} | {level} | {message}".into()
                ),
            ]
        );
    }

    #[test]
    fn quotes_comments_and_export() {
        let text = "export A=1 # one\nB=\"x # y\\n\" # c\nC='$raw \\n'\nD=a#b\nE=\n";
        assert_eq!(
            parse(text).unwrap(),
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "x # y\n".into()),
                ("C".into(), "$raw \\n".into()),
                ("D".into(), "a#b".into()),
                ("E".into(), String::new()),
            ]
        );
    }

    #[test]
    fn bad_lines_are_reported_by_number() {
        assert_eq!(parse("A=1\nnonsense\n").unwrap_err().line, 2);
        assert_eq!(parse("1A=x").unwrap_err().line, 1);
        assert!(parse("A=\"open").is_err());
        assert!(parse("A='x' y").is_err());
        assert_eq!(parse("A=a\0b").unwrap_err().line, 1);
    }

    #[test]
    fn environment_wins_and_missing_file_is_fine() {
        let dir = std::env::temp_dir().join(format!("dotenv-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".env");
        std::fs::write(&path, "PORT=1\nHOST=h\n").unwrap();
        let environment = HashMap::from([("PORT".to_owned(), "2".to_owned())]);
        let is_set = |key: &str| environment.contains_key(key);
        assert_eq!(
            load(&path, is_set).unwrap(),
            vec![("HOST".into(), "h".into())]
        );
        assert!(load(&dir.join("absent"), is_set).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
