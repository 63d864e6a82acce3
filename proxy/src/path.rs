//! Request path normalisation, done once before routing and plugins (`path_normalization:`).
//!
//! A route that protects `/admin` must see `/admin` whatever spelling of it the client sent,
//! and the upstream must get the same path the route matched: otherwise `//admin`,
//! `/x/../admin` or `/%61dmin` reach an upstream that resolves them to `/admin` through a route
//! without the protection. The steps, in order (the model is Envoy's `normalize_path`,
//! `merge_slashes` and `path_with_escaped_slashes_action`):
//!
//! 1. percent-encoding: `%XX` of an unreserved character (RFC 3986 §2.3: `A-Z a-z 0-9 - . _ ~`)
//!    is decoded, every other escape is kept with its hex digits in upper case (§6.2.2.1);
//!    a malformed escape, `%00`, a raw control character and a raw `\` are refused;
//!    an encoded `/` or `\` (`%2F`, `%5C`) follows [`EscapedSlashes`] (default: refused);
//! 2. empty segments are dropped (`//` becomes `/`), unless `merge_slashes: false`;
//! 3. dot segments are removed (RFC 3986 §5.2.4): `/a/./b` is `/a/b`, `/a/../b` is `/b`, and a
//!    `..` above the root stays at the root (`/../x` is `/x`).
//!
//! Letter case is left alone: paths are case-sensitive (RFC 3986 §6.2.2.1), so `/ADMIN` does not
//! match a `/admin` route. An upstream that treats paths case-insensitively needs routes that
//! cover every case.
//!
//! Hand-written rather than taken from `url` / `fluent-uri` / `iri-string`: those parse a whole
//! URI and build a new string each time, none rejects `%2F` or merges slashes, and this runs on
//! every request: [`normalize`] allocates nothing when the path is already normal (the usual
//! case) and is fuzzed (`fuzz/fuzz_targets/path_normalize.rs`).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;

/// What to do with an encoded `/` or `\` (`%2F`, `%5C`, either case) in a path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EscapedSlashes {
    /// 400 (default): an upstream that decodes them would see a different path than the route.
    #[default]
    Reject,
    /// Kept encoded (hex in upper case): part of a segment for routing, forwarded as `%2F`.
    Keep,
    /// Decoded to `/` before the other steps: routing and the upstream see a separator.
    Decode,
}

/// `path_normalization:` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathOptions {
    /// Drop empty segments (`//` becomes `/`); default true.
    #[serde(default = "yes")]
    pub merge_slashes: bool,
    /// Encoded `/` and `\` (default `reject`).
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
}

fn yes() -> bool {
    true
}

impl Default for PathOptions {
    fn default() -> Self {
        PathOptions {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

/// Why a path was refused (answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%2F` or `%5C` with `escaped_slashes: reject`.
    EscapedSlash,
    /// `%00`.
    EncodedNul,
    /// A raw control character or `\`, which RFC 3986 does not allow in a path.
    BadChar,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::BadEscape => "malformed percent-encoding in the path",
            PathError::EscapedSlash => "encoded '/' or '\\' (%2F, %5C) in the path",
            PathError::EncodedNul => "encoded NUL (%00) in the path",
            PathError::BadChar => "control character or '\\' in the path",
        })
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether `seg` (the bytes after a `/` up to the next `/` or the end) is `.` or `..`.
fn dot_segment(seg: &[u8]) -> bool {
    seg == b"." || seg == b".."
}

/// Whether `%` at `i` starts an escape that stays as it is: upper-case hex, not an unreserved
/// character, not NUL, and an encoded slash only with `escaped_slashes: keep`.
fn kept_escape(path: &[u8], i: usize, opts: &PathOptions) -> bool {
    let upper_hex = |b: Option<&u8>| {
        b.filter(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(*b))
            .and_then(|&b| hex(b))
    };
    let (Some(hi), Some(lo)) = (upper_hex(path.get(i + 1)), upper_hex(path.get(i + 2))) else {
        return false;
    };
    match hi << 4 | lo {
        0 => false,
        b'/' | b'\\' => opts.escaped_slashes == EscapedSlashes::Keep,
        v => !unreserved(v),
    }
}

/// Whether `path` needs no change: no escape to decode or upper-case, no bad byte, no dot
/// segment, no `//` (when merging).
fn is_normal(path: &[u8], opts: &PathOptions) -> bool {
    let mut seg_start = 1;
    for (i, &b) in path.iter().enumerate().skip(1) {
        match b {
            b'%' if !kept_escape(path, i, opts) => return false,
            b'\\' | 0..=0x1f | 0x7f => return false,
            b'/' => {
                let seg = &path[seg_start..i];
                if dot_segment(seg) || (opts.merge_slashes && seg.is_empty()) {
                    return false;
                }
                seg_start = i + 1;
            }
            _ => {}
        }
    }
    !dot_segment(&path[seg_start..])
}

/// Step 1: percent-decoding of unreserved characters, upper-case hex for the rest, and the
/// refusals. The result has only ASCII changes, so it stays valid UTF-8.
fn decode(path: &str, opts: &PathOptions) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'%' => {
                let (Some(hi), Some(lo)) = (b.get(i + 1).and_then(|&h| hex(h)), b.get(i + 2).and_then(|&l| hex(l)))
                else {
                    return Err(PathError::BadEscape);
                };
                let v = hi << 4 | lo;
                match v {
                    0 => return Err(PathError::EncodedNul),
                    b'/' | b'\\' => match opts.escaped_slashes {
                        EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                        EscapedSlashes::Decode => out.push(b'/'),
                        EscapedSlashes::Keep => out.extend_from_slice(if v == b'/' { b"%2F" } else { b"%5C" }),
                    },
                    v if unreserved(v) => out.push(v),
                    _ => {
                        out.push(b'%');
                        out.push(b[i + 1].to_ascii_uppercase());
                        out.push(b[i + 2].to_ascii_uppercase());
                    }
                }
                i += 3;
            }
            b'\\' | 0..=0x1f | 0x7f => return Err(PathError::BadChar),
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    // Only ASCII bytes were added or removed, never a part of a multi-byte character.
    String::from_utf8(out).map_err(|_| PathError::BadChar)
}

/// Steps 2 and 3 on a decoded path that starts with `/`.
fn resolve(path: &str, merge_slashes: bool) -> String {
    let mut out = String::with_capacity(path.len());
    let mut segments = path[1..].split('/').peekable();
    let mut trailing = false;
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            "." => trailing = last,
            ".." => {
                // Pop the last segment; at the root there is nothing to pop.
                if let Some(i) = out.rfind('/') {
                    out.truncate(i);
                }
                trailing = last;
            }
            "" if merge_slashes => trailing = last,
            _ => {
                out.push('/');
                out.push_str(seg);
                trailing = false;
            }
        }
    }
    if trailing && !out.ends_with('/') || out.is_empty() {
        out.push('/');
    }
    out
}

/// The normal form of `path` (the path of a request target, without the query), or why it is
/// refused. A path that does not start with `/` (`*` of `OPTIONS *`) is returned unchanged.
/// Allocates only when the path changes.
pub fn normalize<'a>(path: &'a str, opts: &PathOptions) -> Result<Cow<'a, str>, PathError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') || is_normal(b, opts) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path, opts)?;
    Ok(Cow::Owned(resolve(&decoded, opts.merge_slashes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(path: &str) -> Result<String, PathError> {
        normalize(path, &PathOptions::default()).map(Cow::into_owned)
    }

    fn with(path: &str, merge_slashes: bool, escaped_slashes: EscapedSlashes) -> Result<String, PathError> {
        let opts = PathOptions {
            merge_slashes,
            escaped_slashes,
        };
        normalize(path, &opts).map(Cow::into_owned)
    }

    #[test]
    fn attacker_spellings_of_a_path() {
        for (raw, want) in [
            ("//admin/secret", "/admin/secret"),
            ("/x/../admin/secret", "/admin/secret"),
            ("/%61dmin/secret", "/admin/secret"),
            ("/admin/./secret", "/admin/secret"),
            ("/%2e%2e/admin", "/admin"),
            ("/x/%2E%2E/admin", "/admin"),
            ("/x/.%2e/admin", "/admin"),
            ("/../admin", "/admin"),
            ("/../../..", "/"),
            ("/admin//secret//", "/admin/secret/"),
            ("///", "/"),
            ("/admin/.", "/admin/"),
            ("/admin/..", "/"),
            ("/a/b/../../admin", "/admin"),
            ("/.../x", "/.../x"),
            ("/..a/x", "/..a/x"),
            ("/%7Euser/%41", "/~user/A"),
            ("/a%20b/%c3%a9", "/a%20b/%C3%A9"),
            ("/ADMIN", "/ADMIN"),
            ("/", "/"),
            ("/plain/path", "/plain/path"),
        ] {
            assert_eq!(n(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn refusals() {
        for (raw, err) in [
            ("/admin%2Fsecret", PathError::EscapedSlash),
            ("/admin%2fsecret", PathError::EscapedSlash),
            ("/admin%5Csecret", PathError::EscapedSlash),
            ("/admin%00", PathError::EncodedNul),
            ("/a%", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
            ("/a\\b", PathError::BadChar),
            ("/a\x01b", PathError::BadChar),
            ("/a\x7f", PathError::BadChar),
        ] {
            assert_eq!(n(raw), Err(err), "{raw:?}");
        }
    }

    #[test]
    fn options() {
        assert_eq!(
            with("/a%2fb/../c", true, EscapedSlashes::Keep).as_deref(),
            Ok("/c"),
            "kept %2F is part of a segment"
        );
        assert_eq!(with("/a%2fb", true, EscapedSlashes::Keep).as_deref(), Ok("/a%2Fb"));
        assert_eq!(with("/a%5cb", true, EscapedSlashes::Keep).as_deref(), Ok("/a%5Cb"));
        assert_eq!(
            with("/x%2F..%2Fadmin", true, EscapedSlashes::Decode).as_deref(),
            Ok("/admin")
        );
        assert_eq!(
            with("/x%5C..%5Cadmin", true, EscapedSlashes::Decode).as_deref(),
            Ok("/admin")
        );
        assert_eq!(with("//a//b/", false, EscapedSlashes::Reject).as_deref(), Ok("//a//b/"));
        assert_eq!(
            with("/a//../b", false, EscapedSlashes::Reject).as_deref(),
            Ok("/a/b"),
            "RFC: .. pops the empty segment"
        );
        assert_eq!(with("/a//..", false, EscapedSlashes::Reject).as_deref(), Ok("/a/"));
        assert_eq!(with("/a//../b", true, EscapedSlashes::Reject).as_deref(), Ok("/b"));
    }

    #[test]
    fn normal_paths_are_borrowed_and_others_kept() {
        let opts = PathOptions::default();
        for p in ["/", "/api/v1/items", "/a-b_c~d.e/", "/x.y/..z", "*", "/é"] {
            assert!(matches!(normalize(p, &opts), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    fn check_output(input: &str, out: &str, opts: &PathOptions) {
        assert!(out.starts_with('/'), "{input:?} -> {out:?}");
        if opts.merge_slashes {
            assert!(!out.contains("//"), "{input:?} -> {out:?}");
        }
        assert!(
            !out.contains("/./") && !out.ends_with("/.") && !out.contains("/../") && !out.ends_with("/.."),
            "{input:?} -> {out:?}"
        );
        assert_eq!(
            normalize(out, opts).as_deref(),
            Ok(out),
            "not idempotent: {input:?} -> {out:?}"
        );
        assert!(
            matches!(normalize(out, opts), Ok(Cow::Borrowed(_))),
            "output not seen as normal: {out:?}"
        );
    }

    /// Every path of up to 6 characters over an alphabet that reaches every branch: the output
    /// starts with `/`, has no `//` (when merging) and no dot segment, is its own normal form,
    /// and nothing panics.
    #[test]
    fn exhaustive_short_paths_are_normal_and_idempotent() {
        const ALPHABET: &[u8] = b"/.a%2eF5";
        let all_opts = [
            PathOptions::default(),
            PathOptions {
                merge_slashes: false,
                escaped_slashes: EscapedSlashes::Keep,
            },
            PathOptions {
                merge_slashes: true,
                escaped_slashes: EscapedSlashes::Decode,
            },
        ];
        let mut buf = Vec::new();
        for len in 0..=6u32 {
            for mut code in 0..(ALPHABET.len() as u64).pow(len) {
                buf.clear();
                buf.push(b'/');
                for _ in 0..len {
                    buf.push(ALPHABET[(code % ALPHABET.len() as u64) as usize]);
                    code /= ALPHABET.len() as u64;
                }
                let input = std::str::from_utf8(&buf).unwrap();
                for opts in &all_opts {
                    if let Ok(out) = normalize(input, opts) {
                        check_output(input, &out, opts);
                    }
                }
            }
        }
    }
}
