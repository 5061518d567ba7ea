//! Strict percent-decoding (RFC 3986 §2.1) of the query parameters and path segments that name a
//! user, a token or a resume point. A `%` not followed by two hex digits, or bytes that are not
//! UTF-8 (`%FF`), are an error, never replaced by U+FFFD: lossy decoding would make two different
//! ids (`a%FF`, `a%FE`) the same user.

use std::borrow::Cow;

/// A component that does not decode to UTF-8 text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Value must be valid percent-encoded UTF-8")]
pub struct Undecodable;

/// The first value of the parameter `name` in a query string (`application/x-www-form-urlencoded`:
/// pairs separated by `&`, `+` for a space), strictly decoded. Pairs whose name does not decode
/// are not `name`, and are skipped.
pub fn query_value<'q>(query: &'q str, name: &str) -> Result<Option<Cow<'q, str>>, Undecodable> {
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if decode(key, true).is_ok_and(|key| key == name) {
            return decode(value, true).map(Some);
        }
    }
    Ok(None)
}

/// A path segment, strictly decoded (`+` stands for itself).
pub fn path_segment(raw: &str) -> Result<Cow<'_, str>, Undecodable> {
    decode(raw, false)
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`); the result must be UTF-8.
fn decode(raw: &str, plus_is_space: bool) -> Result<Cow<'_, str>, Undecodable> {
    let escaped = raw.contains('%') || (plus_is_space && raw.contains('+'));
    if !escaped {
        return Ok(Cow::Borrowed(raw));
    }
    let mut bytes = Vec::with_capacity(raw.len());
    let mut rest = raw.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        match byte {
            b'%' => {
                let (hex, tail) = rest.split_first_chunk::<2>().ok_or(Undecodable)?;
                bytes.push((hex_value(hex[0])? << 4) | hex_value(hex[1])?);
                rest = tail;
            }
            b'+' if plus_is_space => bytes.push(b' '),
            other => bytes.push(other),
        }
    }
    String::from_utf8(bytes)
        .map(Cow::Owned)
        .map_err(|_| Undecodable)
}

/// The value of one hex digit.
fn hex_value(digit: u8) -> Result<u8, Undecodable> {
    match digit {
        b'0'..=b'9' => Ok(digit - b'0'),
        b'a'..=b'f' => Ok(digit - b'a' + 10),
        b'A'..=b'F' => Ok(digit - b'A' + 10),
        _ => Err(Undecodable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_escapes_decode_and_invalid_ones_are_refused() {
        fn value(query: &str, name: &str) -> Result<Option<String>, Undecodable> {
            query_value(query, name).map(|value| value.map(Cow::into_owned))
        }
        assert_eq!(
            value("a=1&user_id=a%20b+c", "user_id"),
            Ok(Some("a b c".into()))
        );
        assert_eq!(value("user_id=%C3%A9", "user_id"), Ok(Some("é".into())));
        assert_eq!(
            value("user_id=x&user_id=y", "user_id"),
            Ok(Some("x".into()))
        );
        assert_eq!(value("user%5Fid=x", "user_id"), Ok(Some("x".into())));
        assert_eq!(value("user_id", "user_id"), Ok(Some(String::new())));
        assert_eq!(value("other=%FF", "user_id"), Ok(None));
        for bad in ["%FF", "a%FE", "%FF%FE", "%", "%4", "%ZZ", "%C3"] {
            assert_eq!(
                value(&format!("user_id={bad}"), "user_id"),
                Err(Undecodable),
                "{bad}"
            );
        }
        assert_eq!(path_segment("a+b%2Bc").as_deref(), Ok("a+b+c"));
        assert_eq!(path_segment("%FF"), Err(Undecodable));
    }
}
