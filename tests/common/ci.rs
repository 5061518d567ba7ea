//! Whether this run is CI, the one test for it shared by the test binaries that skip when a tool
//! is missing (the cluster tests without Redis, the browser tests without Chromium): under CI a
//! missing tool fails the test instead.

/// `CI` is `true` or `1` (in any case, as CI services set it).
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| {
        let value = value.trim();
        value.eq_ignore_ascii_case("true") || value == "1"
    })
}
