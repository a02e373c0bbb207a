//! Words as docker's builder reads them: quotes, the escape character and `$` variables, in
//! the instructions docker substitutes in (not `RUN`, `CMD` or `ENTRYPOINT`, whose shell does).

use crate::Error;

/// Where a word's variables come from: the build arguments and environment in scope.
pub trait Lookup {
    fn get(&self, name: &str) -> Option<String>;
}

impl<F: Fn(&str) -> Option<String>> Lookup for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// Expands one word (quotes removed, variables substituted), as docker's `ProcessWord`.
pub fn expand(word: &str, escape: char, env: &dyn Lookup) -> Result<String, Error> {
    let mut words = Lexer::new(word, escape, env, false).run()?;
    Ok(words.pop().map(|w| w.text).unwrap_or_default())
}

/// Splits on unquoted whitespace and expands each part, as docker's `ProcessWords` (the shell
/// forms of `COPY`, `ADD`, `EXPOSE`, `VOLUME`, and `ENV`/`LABEL` pairs).
pub fn split(text: &str, escape: char, env: &dyn Lookup) -> Result<Vec<String>, Error> {
    Ok(Lexer::new(text, escape, env, true)
        .run()?
        .into_iter()
        .map(|w| w.text)
        .collect())
}

/// Splits on unquoted whitespace without expanding anything, keeping quotes and escapes: what
/// a later [`expand`] needs, once the scope is known.
pub fn split_raw(text: &str, escape: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            (None, '\'' | '"') => {
                quote = Some(c);
                cur.push(c);
            }
            (Some(q), c) if c == q => {
                quote = None;
                cur.push(c);
            }
            (q, c) if c == escape && q != Some('\'') => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (_, c) => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

struct Word {
    text: String,
}

struct Lexer<'a> {
    chars: Vec<char>,
    at: usize,
    escape: char,
    env: &'a dyn Lookup,
    split: bool,
}

impl<'a> Lexer<'a> {
    fn new(s: &str, escape: char, env: &'a dyn Lookup, split: bool) -> Self {
        Lexer {
            chars: s.chars().collect(),
            at: 0,
            escape,
            env,
            split,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += 1;
        Some(c)
    }

    fn run(&mut self) -> Result<Vec<Word>, Error> {
        let mut words = Vec::new();
        let mut cur = String::new();
        // A word that was quoted exists even when empty (`""`).
        let mut started = false;
        while let Some(c) = self.next() {
            if self.split && c.is_whitespace() {
                if started || !cur.is_empty() {
                    words.push(Word {
                        text: std::mem::take(&mut cur),
                    });
                }
                started = false;
                continue;
            }
            match c {
                '\'' => {
                    started = true;
                    loop {
                        match self.next() {
                            Some('\'') => break,
                            Some(c) => cur.push(c),
                            None => return Err(Error::Word("unterminated single quote".into())),
                        }
                    }
                }
                '"' => {
                    started = true;
                    self.double_quoted(&mut cur)?;
                }
                '$' => cur.push_str(&self.variable()?),
                c if c == self.escape => match self.next() {
                    Some(n) => cur.push(n),
                    // A trailing escape stays, as docker keeps it.
                    None => cur.push(c),
                },
                c => cur.push(c),
            }
        }
        if started || !cur.is_empty() || (!self.split && words.is_empty()) {
            words.push(Word { text: cur });
        }
        Ok(words)
    }

    fn double_quoted(&mut self, cur: &mut String) -> Result<(), Error> {
        loop {
            match self.next() {
                Some('"') => return Ok(()),
                Some('$') => cur.push_str(&self.variable()?),
                Some(c) if c == self.escape => match self.peek() {
                    // Inside double quotes the escape character escapes only these; before
                    // anything else it is kept (`"C:\Program Files"`).
                    Some(n) if n == '"' || n == '$' || n == self.escape => {
                        self.at += 1;
                        cur.push(n);
                    }
                    _ => cur.push(c),
                },
                Some(c) => cur.push(c),
                None => return Err(Error::Word("unterminated double quote".into())),
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            let ok = if name.is_empty() {
                c.is_ascii_alphabetic() || c == '_'
            } else {
                c.is_ascii_alphanumeric() || c == '_'
            };
            if !ok {
                break;
            }
            name.push(c);
            self.at += 1;
        }
        name
    }

    /// After a `$`: `NAME`, `{NAME}`, `{NAME:-word}` and the other forms docker knows.
    fn variable(&mut self) -> Result<String, Error> {
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(self.env.get(&name).unwrap_or_default());
        }
        self.at += 1;
        let name = self.name();
        if name.is_empty() {
            return Err(Error::Word(
                "bad substitution: ${} needs a variable name".into(),
            ));
        }
        let value = self.env.get(&name);
        match self.next() {
            Some('}') => Ok(value.unwrap_or_default()),
            Some(':') => {
                let op = self
                    .next()
                    .ok_or_else(|| Error::Word(format!("bad substitution in ${{{name}")))?;
                let word = self.operand(&name)?;
                let set = value.as_deref().is_some_and(|v| !v.is_empty());
                self.apply(&name, op, value, set, word)
            }
            Some(op @ ('-' | '+' | '?')) => {
                let word = self.operand(&name)?;
                let set = value.is_some();
                self.apply(&name, op, value, set, word)
            }
            Some(c) => Err(Error::Word(format!(
                "unsupported modifier ({c}) in substitution of ${{{name}}}"
            ))),
            None => Err(Error::Word(format!("missing '}}' in ${{{name}"))),
        }
    }

    /// The word after a modifier, up to its closing brace (braces inside nest), expanded.
    fn operand(&mut self, name: &str) -> Result<String, Error> {
        let mut depth = 0usize;
        let start = self.at;
        loop {
            match self.next() {
                Some('{') => depth += 1,
                Some('}') if depth == 0 => break,
                Some('}') => depth -= 1,
                Some(c) if c == self.escape => {
                    self.at += 1;
                }
                Some(_) => {}
                None => return Err(Error::Word(format!("missing '}}' in ${{{name}"))),
            }
        }
        let raw: String = self.chars[start..self.at - 1].iter().collect();
        let mut inner = Lexer::new(&raw, self.escape, self.env, false);
        Ok(inner.run()?.pop().map(|w| w.text).unwrap_or_default())
    }

    fn apply(
        &self,
        name: &str,
        op: char,
        value: Option<String>,
        set: bool,
        word: String,
    ) -> Result<String, Error> {
        match op {
            '-' => Ok(if set { value.unwrap_or_default() } else { word }),
            '+' => Ok(if set { word } else { String::new() }),
            '?' if set => Ok(value.unwrap_or_default()),
            '?' => Err(Error::Word(if word.is_empty() {
                format!("{name}: is not allowed to be unset")
            } else {
                format!("{name}: {word}")
            })),
            c => Err(Error::Word(format!(
                "unsupported modifier ({c}) in substitution of ${{{name}}}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("apple".into()),
            "EMPTY" => Some(String::new()),
            "SP" => Some("x y".into()),
            _ => None,
        }
    }

    fn ex(s: &str) -> String {
        expand(s, '\\', &env).unwrap()
    }

    #[test]
    fn variables_expand_in_docker_s_forms() {
        assert_eq!(ex("$A"), "apple");
        assert_eq!(ex("${A}s"), "apples");
        assert_eq!(
            ex("$As"),
            "",
            "the name runs to the first non-name character"
        );
        assert_eq!(ex("$NOPE-x"), "-x");
        assert_eq!(ex("${NOPE:-pear}"), "pear");
        assert_eq!(ex("${EMPTY:-pear}"), "pear");
        assert_eq!(ex("${EMPTY-pear}"), "", "set but empty: `-` keeps it");
        assert_eq!(ex("${A:+set}"), "set");
        assert_eq!(ex("${EMPTY:+set}"), "");
        assert_eq!(ex("${EMPTY+set}"), "set");
        assert_eq!(ex("${NOPE:-${A}}"), "apple", "the default is expanded");
        assert_eq!(ex("${NOPE:-{x}}"), "{x}", "braces inside a default nest");
        assert_eq!(ex("a$"), "a$");
        assert_eq!(ex("$1"), "$1");
        assert!(
            matches!(expand("${NOPE:?needed}", '\\', &env), Err(Error::Word(m)) if m == "NOPE: needed")
        );
        assert!(expand("${A", '\\', &env).is_err());
        assert!(
            expand("${A/x/y}", '\\', &env).is_err(),
            "not silently literal"
        );
    }

    #[test]
    fn quotes_and_the_escape_character() {
        assert_eq!(ex("'$A'"), "$A", "single quotes expand nothing");
        assert_eq!(ex("\"$A b\""), "apple b");
        assert_eq!(ex("\\$A"), "$A");
        assert_eq!(ex("\"a\\\"b\""), "a\"b");
        assert_eq!(ex("\"C:\\Program Files\""), "C:\\Program Files");
        assert_eq!(ex("a\\ b"), "a b");
        assert_eq!(expand("`$A", '`', &env).unwrap(), "$A", "a backtick escape");
        assert_eq!(expand("C:\\dir", '`', &env).unwrap(), "C:\\dir");
        assert!(expand("'open", '\\', &env).is_err());
    }

    #[test]
    fn splitting_keeps_quoted_spaces_and_empty_quoted_words() {
        assert_eq!(
            split("a  \"b c\" ''  $SP", '\\', &env).unwrap(),
            ["a", "b c", "", "x y"]
        );
        assert_eq!(split("   ", '\\', &env).unwrap(), Vec::<String>::new());
        assert_eq!(
            split_raw("k=\"a b\" j='$x y' l=a\\ b", '\\'),
            ["k=\"a b\"", "j='$x y'", "l=a\\ b"]
        );
    }
}
