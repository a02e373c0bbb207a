//! `.env` / `env_file` syntax as compose reads it (compose-go's dotenv rules).

use crate::interp::{self, InterpError};

/// Why an env file cannot be read; each variant carries the 1-based line of the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DotenvError {
    /// A key with whitespace inside it (`KEY NAME=…`); spaces around `=` are fine.
    #[error("key cannot contain a space")]
    KeyWithSpace { line: u32 },
    /// A key outside compose's variable-name characters.
    #[error("invalid variable name {key:?}")]
    InvalidName { line: u32, key: String },
    /// A quote that is never closed.
    #[error("unterminated quoted value")]
    Unterminated { line: u32 },
    /// A value whose `${…}` cannot be interpolated.
    #[error("{source}")]
    Interpolation { line: u32, source: InterpError },
}

impl DotenvError {
    /// The line of the entry in its file.
    pub(crate) fn line(&self) -> u32 {
        match self {
            Self::KeyWithSpace { line }
            | Self::InvalidName { line, .. }
            | Self::Unterminated { line }
            | Self::Interpolation { line, .. } => *line,
        }
    }
}

/// Compose's escapes inside double quotes; any other `\x` keeps its backslash.
fn unescape_double(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.peek().copied() {
            Some(e @ ('a' | 'b' | 'f' | 'n' | 'r' | 't' | 'v' | '"' | '\\')) => {
                chars.next();
                out.push(match e {
                    'a' => '\u{7}',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'v' => '\u{b}',
                    other => other,
                });
            }
            // `\$` is a literal dollar: kept as `$$` so interpolation leaves it alone.
            Some('$') => {
                chars.next();
                out.push_str("$$");
            }
            // `\0` and up to three digits: with exactly three octal digits (at most 0377)
            // it is that character, as compose's XSI-echo escape; otherwise kept as written.
            Some('0') => {
                chars.next();
                let mut digits = String::new();
                while digits.len() < 3
                    && let Some(d) = chars.next_if(char::is_ascii_digit)
                {
                    digits.push(d);
                }
                match u32::from_str_radix(&digits, 8)
                    .ok()
                    .filter(|v| digits.len() == 3 && *v <= 0o377)
                    .and_then(char::from_u32)
                {
                    Some(c) => out.push(c),
                    None => {
                        out.push_str("\\0");
                        out.push_str(&digits);
                    }
                }
            }
            _ => out.push('\\'),
        }
    }
    out
}

/// The raw text of a quoted value starting after the opening `quote`: a backslash before the
/// quote character keeps only the quote; every other backslash stays (compose-go's reader).
/// Returns the raw value and the byte length consumed including the closing quote.
fn quoted(src: &str, quote: char) -> Option<(String, usize)> {
    let mut raw = String::new();
    let mut escape = false;
    for (i, c) in src.char_indices() {
        if c == quote && !escape {
            return Some((raw, i + c.len_utf8()));
        }
        if c == quote {
            raw.push(c);
            escape = false;
            continue;
        }
        if escape {
            raw.push('\\');
            escape = false;
        }
        if c == '\\' {
            escape = true;
            continue;
        }
        raw.push(c);
    }
    None
}

/// Parses env-file text. Values of unquoted and double-quoted entries are interpolated with
/// `lookup` first (the process environment wins, as in compose), then variables defined
/// earlier in the file. A bare `KEY` line takes its value from `lookup` (and is left out when
/// unset). Errors carry the 1-based line number.
pub(crate) fn parse(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, DotenvError> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let text = text.trim_start_matches('\u{feff}');
    // Byte offset where each line starts, to report the line of a multi-line value.
    let line_of = |off: usize| 1 + text[..off].matches('\n').count() as u32;
    let mut rest = text;
    loop {
        let trimmed = rest.trim_start();
        if trimmed.is_empty() {
            break;
        }
        let start = text.len() - trimmed.len();
        let lineno = line_of(start);
        let line_end = trimmed.find('\n').unwrap_or(trimmed.len());
        if trimmed.starts_with('#') {
            rest = &trimmed[line_end..];
            continue;
        }
        let line = &trimmed[..line_end];
        let body = match line.strip_prefix("export") {
            Some(r) if r.starts_with([' ', '\t']) => r.trim_start(),
            _ => line,
        };
        let (key, after) = match body.find(['=', ':']) {
            Some(p) => (body[..p].trim(), Some(&body[p + 1..])),
            None => (body.trim_end(), None),
        };
        if key.contains(char::is_whitespace) {
            return Err(DotenvError::KeyWithSpace { line: lineno });
        }
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_alphanumeric() || "_.-[]".contains(c))
        {
            return Err(DotenvError::InvalidName {
                line: lineno,
                key: key.to_owned(),
            });
        }
        let local = |k: &str| {
            lookup(k).or_else(|| {
                vars.iter()
                    .rev()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
            })
        };
        let Some(after) = after else {
            if let Some(v) = lookup(key) {
                vars.push((key.to_owned(), v));
            }
            rest = &trimmed[line_end..];
            continue;
        };
        // `after` starts inside `trimmed`; find its offset to continue past multi-line values.
        let after_off = after.as_ptr() as usize - trimmed.as_ptr() as usize;
        let value_src = trimmed[after_off..].trim_start_matches([' ', '\t']);
        let value_off = trimmed.len() - value_src.len();
        let (value, consumed) = match value_src.chars().next() {
            Some(q @ ('\'' | '"')) => {
                let Some((raw, len)) = quoted(&value_src[1..], q) else {
                    return Err(DotenvError::Unterminated { line: lineno });
                };
                let v = if q == '"' {
                    interp::interpolate(&unescape_double(&raw), &local)
                        .map_err(|source| DotenvError::Interpolation {
                            line: lineno,
                            source,
                        })?
                        .value
                } else {
                    raw
                };
                // Anything after the closing quote up to the end of the line is ignored
                // (an inline comment).
                let after_quote = &value_src[1 + len..];
                let eol = after_quote.find('\n').unwrap_or(after_quote.len());
                (v, value_off + 1 + len + eol)
            }
            _ => {
                let eol = value_src.find('\n').unwrap_or(value_src.len());
                let v = &value_src[..eol];
                let v = v.split_once(" #").map_or(v, |(a, _)| a);
                let v = interp::interpolate(v.trim_end(), &local)
                    .map_err(|source| DotenvError::Interpolation {
                        line: lineno,
                        source,
                    })?
                    .value;
                (v, value_off + eol)
            }
        };
        vars.push((key.to_owned(), value));
        rest = &trimmed[consumed..];
    }
    Ok(vars)
}

/// Parses into a map (later definitions win).
#[cfg(test)]
pub(crate) fn parse_map(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<std::collections::BTreeMap<String, String>, DotenvError> {
    Ok(parse(text, lookup)?.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let text = "# comment\n\nA=1\nexport B = two words # trailing\nC='lit $A'\nD=\"x\\ny ${A}\"\nE=${A}-$B\nF\nHOME\nG=\"multi\nline\"\nH: yaml\n";
        let lookup = |k: &str| (k == "HOME").then(|| "/root".to_owned());
        let m = parse_map(text, &lookup).unwrap();
        assert_eq!(m["A"], "1");
        assert_eq!(m["B"], "two words");
        assert_eq!(m["C"], "lit $A");
        assert_eq!(m["D"], "x\ny 1");
        assert_eq!(m["E"], "1-two words");
        assert!(!m.contains_key("F"));
        assert_eq!(m["HOME"], "/root");
        assert_eq!(m["G"], "multi\nline");
        assert_eq!(m["H"], "yaml");
    }

    #[test]
    fn bad_lines() {
        let lookup = |_: &str| None;
        assert_eq!(
            parse("A=1\nB C=2\n", &lookup).unwrap_err(),
            DotenvError::KeyWithSpace { line: 2 }
        );
        assert_eq!(
            parse("A='x\n", &lookup).unwrap_err(),
            DotenvError::Unterminated { line: 1 }
        );
        let bad = parse("A=1\nB=${X\n", &lookup).unwrap_err();
        assert_eq!(bad.line(), 2);
        assert!(matches!(bad, DotenvError::Interpolation { .. }), "{bad:?}");
    }

    /// Expectations of compose-go's dotenv tests (quoted values, escapes, precedence).
    #[test]
    fn compose_dotenv_rules() {
        let none = |_: &str| None;
        let one = |t: &str, k: &str| parse_map(t, &none).unwrap()[k].clone();
        assert_eq!(one(r#"FOO="foo\$BAR""#, "FOO"), "foo$BAR");
        assert_eq!(one(r#"FOO="foo\${BAR}""#, "FOO"), "foo${BAR}");
        assert_eq!(
            one("FOO=test\nBAR=\"foo\\${FOO} ${FOO}\"", "BAR"),
            "foo${FOO} test"
        );
        assert_eq!(one(r#"P="C:\Program Files""#, "P"), r"C:\Program Files");
        assert_eq!(one(r"K='Let\'s go!'", "K"), "Let's go!");
        assert_eq!(one(r"D='\n'", "D"), r"\n");
        assert_eq!(one(r#"H="\n""#, "H"), "\n");
        assert_eq!(one(r#"E="escaped\"bar""#, "E"), "escaped\"bar");
        assert_eq!(one(r#"F="'d'""#, "F"), "'d'");
        assert_eq!(one("FOO =bar", "FOO"), "bar");
        assert_eq!(one("FOO= bar", "FOO"), "bar");
        assert_eq!(one("DEBUG = true", "DEBUG"), "true");
        assert_eq!(one("OPTION_A: Foo=bar", "OPTION_A"), "Foo=bar");
        assert_eq!(one("OPTION_A=1:B", "OPTION_A"), "1:B");
        assert_eq!(
            one("I = \"echo 'asd'\" # Inline comment", "I"),
            "echo 'asd'"
        );
        assert_eq!(one("J = 'first\nsecond'\nK=1", "J"), "first\nsecond");
        assert_eq!(one("J = 'first\nsecond'\nK=1", "K"), "1");
        let err = parse("# c\nfoo=\"\n  a\n\"\nINVALID LINE\nzot=qix\n", &none).unwrap_err();
        assert_eq!(err, DotenvError::KeyWithSpace { line: 5 });
        assert_eq!(err.to_string(), "key cannot contain a space");
        // The process environment wins over a variable defined earlier in the same file.
        let env = |k: &str| (k == "A").then(|| "from-env".to_owned());
        let m = parse_map("A=in-file\nB=${A}\n", &env).unwrap();
        assert_eq!(m["B"], "from-env");
    }
}
