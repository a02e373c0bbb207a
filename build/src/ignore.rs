//! `.dockerignore`, as docker reads it: one pattern per line, `#` comments, `!` re-includes,
//! `*`, `?`, `[…]` within a path segment and `**` across segments; a pattern that matches a
//! directory matches everything below it; the last matching pattern wins.

use crate::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    segments: Vec<String>,
    exclusion: bool,
}

/// The patterns of a `.dockerignore`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ignore {
    patterns: Vec<Pattern>,
}

impl Ignore {
    pub fn parse(text: &str) -> Result<Ignore, Error> {
        let mut patterns = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exclusion, p) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let cleaned = crate::config::clean(p);
            let segments: Vec<String> = cleaned
                .trim_start_matches('/')
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            if segments.is_empty() {
                // `/` or `.`: the whole context, as docker reads it.
                patterns.push(Pattern {
                    segments: vec!["**".into()],
                    exclusion,
                });
                continue;
            }
            for s in &segments {
                if s != "**" {
                    glob(s, "").map_err(|m| {
                        Error::Word(format!(".dockerignore line {}: {p}: {m}", n + 1))
                    })?;
                }
            }
            patterns.push(Pattern {
                segments,
                exclusion,
            });
        }
        Ok(Ignore { patterns })
    }

    /// Whether `path` (relative to the context, `/`-separated) is left out of the context.
    pub fn excludes(&self, path: &str) -> bool {
        let parts: Vec<&str> = path
            .split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .collect();
        let mut out = false;
        for p in &self.patterns {
            // The path itself or any directory above it.
            let hit = (1..=parts.len()).any(|n| matches(&p.segments, &parts[..n]));
            if hit {
                out = !p.exclusion;
            }
        }
        out
    }

    /// Whether any `!` pattern could re-include something under an excluded directory: then
    /// the directory must be walked instead of skipped whole.
    pub fn has_exclusions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }
}

fn matches(pat: &[String], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((s, rest)) if s == "**" => (0..=path.len()).any(|i| matches(rest, &path[i..])),
        Some((s, rest)) => match path.split_first() {
            Some((p, prest)) => glob(s, p).unwrap_or(false) && matches(rest, prest),
            None => false,
        },
    }
}

/// One segment against one name: `*`, `?`, `[a-z]`, `[^…]`, `\x`. Errors on a malformed class.
/// Whether `path` (`/`-separated, relative) matches `pattern` segment by segment, as docker
/// matches a `COPY` source with wildcards (`*`, `?`, `[…]` never cross a `/`).
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    let n: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    p.len() == n.len() && p.iter().zip(&n).all(|(a, b)| glob(a, b).unwrap_or(false))
}

fn glob(pat: &str, name: &str) -> Result<bool, &'static str> {
    let p: Vec<char> = pat.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Checks the whole pattern's syntax once, whatever the name.
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' => {
                if i + 1 >= p.len() {
                    return Err("a trailing \\ escapes nothing");
                }
                i += 2;
            }
            '[' => {
                let close = class_end(&p, i).ok_or("an unclosed [ in the pattern")?;
                i = close + 1;
            }
            _ => i += 1,
        }
    }
    Ok(glob_at(&p, 0, &n, 0))
}

fn class_end(p: &[char], open: usize) -> Option<usize> {
    let mut j = open + 1;
    if p.get(j) == Some(&'^') || p.get(j) == Some(&'!') {
        j += 1;
    }
    let first = j;
    while j < p.len() {
        match p[j] {
            '\\' => j += 2,
            ']' if j > first => return Some(j),
            _ => j += 1,
        }
    }
    None
}

fn glob_at(p: &[char], pi: usize, n: &[char], ni: usize) -> bool {
    if pi == p.len() {
        return ni == n.len();
    }
    match p[pi] {
        '*' => (ni..=n.len()).any(|k| glob_at(p, pi + 1, n, k)),
        '?' => ni < n.len() && glob_at(p, pi + 1, n, ni + 1),
        '\\' => ni < n.len() && p.get(pi + 1) == Some(&n[ni]) && glob_at(p, pi + 2, n, ni + 1),
        '[' => {
            let Some(close) = class_end(p, pi) else {
                return false;
            };
            if ni >= n.len() {
                return false;
            }
            let mut j = pi + 1;
            let negate = matches!(p[j], '^' | '!');
            if negate {
                j += 1;
            }
            let c = n[ni];
            let mut hit = false;
            while j < close {
                let lo = if p[j] == '\\' {
                    j += 1;
                    p[j]
                } else {
                    p[j]
                };
                if j + 2 < close && p[j + 1] == '-' {
                    let hi = p[j + 2];
                    hit |= lo <= c && c <= hi;
                    j += 3;
                } else {
                    hit |= lo == c;
                    j += 1;
                }
            }
            hit != negate && glob_at(p, close + 1, n, ni + 1)
        }
        c => ni < n.len() && n[ni] == c && glob_at(p, pi + 1, n, ni + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_s_pattern_rules() {
        let i = Ignore::parse(
            "# comment\n\n*.md\n!README.md\n/target\nsrc/**/*.tmp\n**/.git\nsecret?.txt\nlogs/[a-c]*.log\n  node_modules  \n",
        )
        .unwrap();
        for (path, out) in [
            ("notes.md", true),
            ("README.md", false),
            ("docs/notes.md", false),
            ("target", true),
            ("target/debug/x", true),
            ("a/target", false),
            ("src/x.tmp", true),
            ("src/a/b/x.tmp", true),
            ("x.tmp", false),
            (".git/config", true),
            ("sub/.git/HEAD", true),
            ("secret1.txt", true),
            ("secret12.txt", false),
            ("logs/b1.log", true),
            ("logs/d1.log", false),
            ("node_modules/x/y.js", true),
            ("main.go", false),
        ] {
            assert_eq!(i.excludes(path), out, "{path}");
        }
        assert!(i.has_exclusions());
    }

    #[test]
    fn the_last_match_wins_and_a_re_include_below_an_excluded_directory_works() {
        let i = Ignore::parse("docs\n!docs/keep.txt\n").unwrap();
        assert!(i.excludes("docs/other.txt"));
        assert!(!i.excludes("docs/keep.txt"));
        let i = Ignore::parse("!a.txt\n*.txt\n").unwrap();
        assert!(i.excludes("a.txt"), "a later pattern wins");
        let i = Ignore::parse("[^a]*\n").unwrap();
        assert!(i.excludes("b") && !i.excludes("a"));
        let i = Ignore::parse("./x/../y\n").unwrap();
        assert!(i.excludes("y") && !i.excludes("x"), "patterns are cleaned");
        assert!(Ignore::parse("[abc\n").is_err());
        assert!(Ignore::parse("").unwrap().patterns.is_empty());
    }
}
