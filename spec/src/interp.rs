//! Compose variable interpolation: `$VAR`, `${VAR}`, `${VAR:-d}`, `${VAR-d}`, `${VAR:?e}`,
//! `${VAR?e}`, `${VAR:+a}`, `${VAR+a}`, nested defaults, `$$` for a literal `$`.
//!
//! Written here rather than taken from serde-saphyr's property feature: compose interpolates
//! after parsing, only in values, with a lookup that combines the process environment and the
//! `.env`/`--env-file` contents, and an unset variable is a warning (not an error). Having the
//! parsed node tree with positions lets every error and warning carry its file:line:col.

/// Why a string cannot be interpolated; the messages are compose's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InterpError {
    #[error("interpolation nested too deeply")]
    TooDeep,
    #[error(
        "invalid interpolation format in {whole:?}: missing closing brace. You may need to escape any $ with another $"
    )]
    MissingBrace { whole: String },
    #[error(
        "invalid interpolation format in {whole:?}: \"${{{body}}}\". You may need to escape any $ with another $"
    )]
    Invalid { whole: String, body: String },
    #[error("required variable {name} is missing a value{}", reason(message))]
    Required { name: String, message: String },
}

/// The `: reason` of a missing required variable; compose writes nothing for an empty one.
fn reason(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// Outcome of interpolating one string.
#[derive(Debug, Default)]
pub(crate) struct Interpolated {
    pub value: String,
    /// Variables that were unset and had no default (each produced an empty string).
    pub unset: Vec<String>,
}

fn is_name_start(c: char) -> bool {
    c == '_' || c.is_ascii_alphabetic()
}

fn is_name_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

/// Interpolates `s`. `lookup` returns the value of a variable, `None` when unset.
pub(crate) fn interpolate(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Interpolated, InterpError> {
    let mut out = Interpolated::default();
    interp_into(s, lookup, &mut out, 0)?;
    Ok(out)
}

fn interp_into(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut Interpolated,
    depth: usize,
) -> Result<(), InterpError> {
    if depth > 32 {
        return Err(InterpError::TooDeep);
    }
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '$' {
            out.value.push(c);
            continue;
        }
        match chars.peek().map(|&(_, c)| c) {
            Some('$') => {
                chars.next();
                out.value.push('$');
            }
            Some('{') => {
                let body_start = i + 2;
                let end =
                    matching_brace(s, body_start).ok_or_else(|| InterpError::MissingBrace {
                        whole: s.to_owned(),
                    })?;
                let body = &s[body_start..end];
                braced(body, s, lookup, out, depth)?;
                // Skip the consumed body and closing brace.
                while let Some(&(j, _)) = chars.peek() {
                    if j > end {
                        break;
                    }
                    chars.next();
                }
            }
            Some(c2) if is_name_start(c2) => {
                let start = i + 1;
                let mut end = start;
                while let Some(&(j, c)) = chars.peek() {
                    if !is_name_char(c) {
                        break;
                    }
                    end = j + c.len_utf8();
                    chars.next();
                }
                let name = &s[start..end];
                match lookup(name) {
                    Some(v) => out.value.push_str(&v),
                    None => out.unset.push(name.to_owned()),
                }
            }
            // A `$` not followed by a name or a brace is kept literally, as compose does.
            _ => out.value.push('$'),
        }
    }
    Ok(())
}

/// Index of the `}` that closes a `${` whose body starts at `from`, counting nested braces.
fn matching_brace(s: &str, from: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'$' if i + 1 < b.len() && b[i + 1] == b'$' => i += 1,
            // Any `{` opens a level, as in compose-go: `${JSON:-{"a":1}}` has a JSON default.
            b'{' => depth += 1,
            b'}' => {
                if depth == 0 {
                    return Some(i);
                }
                depth -= 1;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn braced(
    body: &str,
    whole: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut Interpolated,
    depth: usize,
) -> Result<(), InterpError> {
    let invalid = || InterpError::Invalid {
        whole: whole.to_owned(),
        body: body.to_owned(),
    };
    let name_len = body
        .char_indices()
        .find(|&(_, c)| !is_name_char(c))
        .map_or(body.len(), |(i, _)| i);
    let name = &body[..name_len];
    if name.is_empty() || !name.starts_with(is_name_start) {
        return Err(invalid());
    }
    let rest = &body[name_len..];
    let value = lookup(name);
    let (op, arg) = if rest.is_empty() {
        ("", "")
    } else if let Some(op) = [":-", ":?", ":+", "-", "?", "+"]
        .into_iter()
        .find(|op| rest.starts_with(op))
    {
        (op, &rest[op.len()..])
    } else {
        return Err(invalid());
    };
    let set = value.is_some();
    let non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
    match op {
        "" => match value {
            Some(v) => out.value.push_str(&v),
            None => out.unset.push(name.to_owned()),
        },
        ":-" | "-" => {
            let use_default = if op == ":-" { !non_empty } else { !set };
            if use_default {
                interp_into(arg, lookup, out, depth + 1)?;
            } else {
                out.value.push_str(value.as_deref().unwrap_or_default());
            }
        }
        ":?" | "?" => {
            let missing = if op == ":?" { !non_empty } else { !set };
            if missing {
                let mut msg = Interpolated::default();
                interp_into(arg, lookup, &mut msg, depth + 1)?;
                return Err(InterpError::Required {
                    name: name.to_owned(),
                    message: msg.value,
                });
            }
            out.value.push_str(value.as_deref().unwrap_or_default());
        }
        _ => {
            let use_alt = if op == ":+" { non_empty } else { set };
            if use_alt {
                interp_into(arg, lookup, out, depth + 1)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &str) -> Result<(String, Vec<String>), InterpError> {
        let lookup = |k: &str| match k {
            "SET" => Some("v".to_owned()),
            "EMPTY" => Some(String::new()),
            "NESTED" => Some("n".to_owned()),
            _ => None,
        };
        interpolate(s, &lookup).map(|i| (i.value, i.unset))
    }

    #[test]
    fn all_operators() {
        let cases = [
            ("$SET", "v"),
            ("${SET}", "v"),
            ("a${SET}b", "avb"),
            ("$SET.x", "v.x"),
            ("${UNSET:-d}", "d"),
            ("${EMPTY:-d}", "d"),
            ("${EMPTY-d}", ""),
            ("${UNSET-d}", "d"),
            ("${SET:-d}", "v"),
            ("${SET:+alt}", "alt"),
            ("${EMPTY:+alt}", ""),
            ("${EMPTY+alt}", "alt"),
            ("${UNSET+alt}", ""),
            ("${UNSET:-${NESTED}}", "n"),
            ("${UNSET:-${UNSET2:-deep}}", "deep"),
            ("$$SET", "$SET"),
            ("$${SET}", "${SET}"),
            ("cost: 5$", "cost: 5$"),
            ("a $ b", "a $ b"),
            ("${UNSET:-a}}", "a}"),
            ("${SET:-{x}}", "v"),
            ("${UNSET:-{x}}", "{x}"),
            (r#"ok ${UNSET:-{"json":1}}"#, r#"ok {"json":1}"#),
            (r#"ok ${SET-{"json":1}}"#, "ok v"),
        ];
        for (input, want) in cases {
            assert_eq!(run(input).unwrap().0, want, "{input}");
        }
    }

    #[test]
    fn unset_is_reported_and_empty() {
        assert_eq!(
            run("x${UNSET}y$OTHER").unwrap(),
            (
                "xy".to_owned(),
                vec!["UNSET".to_owned(), "OTHER".to_owned()]
            )
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            run("${UNSET:?need it}").unwrap_err().to_string(),
            "required variable UNSET is missing a value: need it"
        );
        assert!(run("${EMPTY:?x}").is_err());
        assert_eq!(run("${EMPTY?x}").unwrap().0, "");
        assert!(
            run("${UNSET")
                .unwrap_err()
                .to_string()
                .contains("missing closing brace")
        );
        assert!(run("${}").is_err());
        assert!(run("${1A}").is_err());
        assert!(run("${A B}").is_err());
    }
}
