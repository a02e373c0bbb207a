//! `.env` / `env_file` syntax as compose reads it.

use crate::interp;

/// Parses env-file text. Values of unquoted and double-quoted entries are interpolated with
/// variables defined earlier in the file, then `lookup`. A bare `KEY` line takes its value from
/// `lookup` (and is left out when unset). Errors carry the 1-based line number.
pub(crate) fn parse(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, (u32, String)> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let lineno = (i + 1) as u32;
        let line = lines[i].trim_start_matches('\u{feff}').trim();
        i += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let (key, raw) = match line.find(['=', ':']) {
            Some(p) => (line[..p].trim(), Some(line[p + 1..].trim_start())),
            None => (line, None),
        };
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return Err((lineno, format!("invalid variable name {key:?}")));
        }
        let local = |k: &str| {
            vars.iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .or_else(|| lookup(k))
        };
        let Some(raw) = raw else {
            if let Some(v) = lookup(key) {
                vars.push((key.to_owned(), v));
            }
            continue;
        };
        let value = if let Some(q) = raw.strip_prefix('\'') {
            let mut acc = q.to_owned();
            while !acc.contains('\'') && i < lines.len() {
                acc.push('\n');
                acc.push_str(lines[i]);
                i += 1;
            }
            match acc.find('\'') {
                Some(end) => acc[..end].to_owned(),
                None => return Err((lineno, "unterminated single-quoted value".to_owned())),
            }
        } else if let Some(q) = raw.strip_prefix('"') {
            let mut acc = q.to_owned();
            let closing = |a: &str| {
                let b = a.as_bytes();
                let mut k = 0;
                while k < b.len() {
                    match b[k] {
                        b'\\' => k += 1,
                        b'"' => return Some(k),
                        _ => {}
                    }
                    k += 1;
                }
                None
            };
            while closing(&acc).is_none() && i < lines.len() {
                acc.push('\n');
                acc.push_str(lines[i]);
                i += 1;
            }
            let Some(end) = closing(&acc) else {
                return Err((lineno, "unterminated double-quoted value".to_owned()));
            };
            let mut unescaped = String::new();
            let mut chars = acc[..end].chars();
            while let Some(c) = chars.next() {
                if c != '\\' {
                    unescaped.push(c);
                    continue;
                }
                match chars.next() {
                    Some('n') => unescaped.push('\n'),
                    Some('t') => unescaped.push('\t'),
                    Some('r') => unescaped.push('\r'),
                    Some(o) => unescaped.push(o),
                    None => unescaped.push('\\'),
                }
            }
            interp::interpolate(&unescaped, &local)
                .map_err(|e| (lineno, e))?
                .value
        } else {
            let v = match raw.find(" #") {
                Some(p) => &raw[..p],
                None => raw,
            };
            interp::interpolate(v.trim_end(), &local)
                .map_err(|e| (lineno, e))?
                .value
        };
        vars.push((key.to_owned(), value));
    }
    Ok(vars)
}

/// Parses into a map (later definitions win).
#[cfg(test)]
pub(crate) fn parse_map(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<std::collections::BTreeMap<String, String>, (u32, String)> {
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
        assert_eq!(parse("A=1\nB C=2\n", &lookup).unwrap_err().0, 2);
        assert_eq!(parse("A='x\n", &lookup).unwrap_err().0, 1);
    }
}
