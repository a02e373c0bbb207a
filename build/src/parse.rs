//! From text to instructions, with docker's rules for directives, comments and continuations.

use crate::words::split_raw;
use crate::{Command, Copy, Dockerfile, Error, Health, Instruction, Kind};

/// Parses a Dockerfile. Errors name the line docker would name.
pub fn parse(text: &str) -> Result<Dockerfile, Error> {
    let lines: Vec<&str> = text.lines().collect();
    let (syntax, escape, first) = directives(&lines)?;
    let mut instructions = Vec::new();
    for (line, logical) in logical_lines(&lines[first..], first, escape) {
        instructions.push(Instruction {
            line,
            kind: instruction(line, &logical, escape)?,
        });
    }
    let Some(first) = instructions.first() else {
        return Err(Error::at(1, "the Dockerfile has no instructions"));
    };
    if let Some(i) = instructions
        .iter()
        .find(|i| !matches!(i.kind, Kind::Arg(_) | Kind::From { .. }))
        .filter(|i| {
            !instructions
                .iter()
                .take_while(|j| j.line < i.line)
                .any(|j| matches!(j.kind, Kind::From { .. }))
        })
    {
        return Err(Error::at(
            i.line,
            "no build stage in current context: only ARG may come before the first FROM",
        ));
    }
    if !instructions
        .iter()
        .any(|i| matches!(i.kind, Kind::From { .. }))
    {
        return Err(Error::at(first.line, "the Dockerfile has no FROM"));
    }
    Ok(Dockerfile {
        syntax,
        escape,
        instructions,
    })
}

/// `# key=value` lines at the very top. The first line that is not one (an instruction, a
/// blank line, any other comment) ends them. Returns the index of the first other line.
fn directives(lines: &[&str]) -> Result<(Option<String>, char, usize), Error> {
    let (mut syntax, mut escape) = (None, None);
    for (i, l) in lines.iter().enumerate() {
        let Some(body) = l.trim().strip_prefix('#') else {
            return Ok((syntax, escape.unwrap_or('\\'), i));
        };
        let Some((k, v)) = body.split_once('=') else {
            return Ok((syntax, escape.unwrap_or('\\'), i));
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k.is_empty() || k.contains(char::is_whitespace) {
            return Ok((syntax, escape.unwrap_or('\\'), i));
        }
        match k.as_str() {
            "syntax" if syntax.is_some() => {
                return Err(Error::at(
                    i + 1,
                    "only one syntax parser directive can be used",
                ));
            }
            "syntax" => syntax = Some(v.to_string()),
            "escape" if escape.is_some() => {
                return Err(Error::at(
                    i + 1,
                    "only one escape parser directive can be used",
                ));
            }
            "escape" => {
                escape = Some(match v {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(Error::at(
                            i + 1,
                            format!("invalid escape token '{v}' does not match ` or \\"),
                        ));
                    }
                })
            }
            // `check` and unknown directives are comments, as docker reads them.
            _ => {}
        }
    }
    Ok((syntax, escape.unwrap_or('\\'), lines.len()))
}

/// Joins continued lines, dropping comments (also inside a continuation) and blank lines.
/// Yields (1-based line of the first physical line, text).
fn logical_lines(lines: &[&str], offset: usize, escape: char) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut cur: Option<(usize, String)> = None;
    for (i, raw) in lines.iter().enumerate() {
        let trimmed = raw.trim_start();
        if trimmed.starts_with('#') || (trimmed.is_empty() && cur.is_none()) {
            continue;
        }
        if trimmed.is_empty() {
            // A blank line inside a continuation is skipped, as docker does (with a warning).
            continue;
        }
        let body = raw.trim_end();
        let (text, more) = match body.strip_suffix(escape) {
            Some(t) => (t, true),
            None => (body, false),
        };
        let entry = cur.get_or_insert_with(|| (offset + i + 1, String::new()));
        entry.1.push_str(text);
        if !more && let Some(done) = cur.take() {
            out.push(done);
        }
    }
    out.extend(cur);
    out
}

/// Leading `--name[=value]` flags, and what follows them.
fn flags(rest: &str) -> (Vec<(String, Option<String>)>, &str) {
    let mut out = Vec::new();
    let mut rest = rest.trim_start();
    while let Some(f) = rest.strip_prefix("--") {
        let end = f.find(char::is_whitespace).unwrap_or(f.len());
        let (flag, after) = f.split_at(end);
        match flag.split_once('=') {
            Some((k, v)) => out.push((k.to_ascii_lowercase(), Some(v.to_string()))),
            None => out.push((flag.to_ascii_lowercase(), None)),
        }
        rest = after.trim_start();
    }
    (out, rest)
}

/// The flags an instruction takes; any other is an error, and the ones docker has that dcpp
/// does not build with say so (not silently dropped).
fn take_flags(
    line: usize,
    word: &str,
    flags: Vec<(String, Option<String>)>,
    allowed: &[&str],
    unsupported: &[&str],
) -> Result<Vec<(String, String)>, Error> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in flags {
        if unsupported.contains(&k.as_str()) {
            return Err(Error::at(
                line,
                format!("{word} --{k} is not supported by dcpp's builder"),
            ));
        }
        if !allowed.contains(&k.as_str()) {
            return Err(Error::at(line, format!("unknown flag: --{k} (on {word})")));
        }
        let Some(v) = v else {
            return Err(Error::at(
                line,
                format!("{word} --{k} needs a value (--{k}=…)"),
            ));
        };
        if out.iter().any(|(o, _)| *o == k) {
            return Err(Error::at(line, format!("{word}: --{k} given twice")));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn flag(flags: &[(String, String)], k: &str) -> Option<String> {
    flags.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone())
}

/// `["a", "b"]` as a list of strings, if the text is one.
fn json_array(rest: &str) -> Option<Vec<String>> {
    let t = rest.trim();
    if !t.starts_with('[') {
        return None;
    }
    serde_json::from_str(t).ok()
}

fn command(rest: &str) -> Command {
    match json_array(rest) {
        Some(v) => Command::Exec(v),
        // Not valid JSON: docker runs it as the shell form.
        None => Command::Shell(rest.trim().to_string()),
    }
}

fn heredoc(line: usize, words: &[String]) -> Result<(), Error> {
    let is = |w: &String| {
        w.strip_prefix("<<").is_some_and(|r| {
            let r = r.strip_prefix('-').unwrap_or(r);
            let r = r.trim_matches(|c| c == '"' || c == '\'');
            r.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && r.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    if words.iter().any(is) {
        return Err(Error::at(
            line,
            "heredocs (<<EOF) are not supported by dcpp's builder: put the text in a file of \
             the context and COPY it",
        ));
    }
    Ok(())
}

/// `KEY=value` pairs (several), or the legacy `KEY value` (one, the rest of the line).
fn pairs(
    line: usize,
    word: &str,
    rest: &str,
    escape: char,
) -> Result<Vec<(String, String)>, Error> {
    let words = split_raw(rest, escape);
    let Some(first) = words.first() else {
        return Err(Error::at(
            line,
            format!("{word} needs at least one argument"),
        ));
    };
    if !first.contains('=') {
        let name = first.clone();
        let value = rest.trim_start()[name.len()..].trim().to_string();
        if value.is_empty() {
            return Err(Error::at(
                line,
                format!("{word} {name}: a value is needed ({word} {name}=VALUE)"),
            ));
        }
        return Ok(vec![(name, value)]);
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some(("", _)) => Err(Error::at(
                line,
                format!("{word}: a name can not be blank ({w})"),
            )),
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => Err(Error::at(
                line,
                format!("{word}: {w} is not NAME=VALUE (all pairs must be in that form)"),
            )),
        })
        .collect()
}

fn one(line: usize, word: &str, rest: &str) -> Result<String, Error> {
    let t = rest.trim();
    if t.is_empty() {
        return Err(Error::at(line, format!("{word} needs an argument")));
    }
    Ok(t.to_string())
}

fn instruction(line: usize, text: &str, escape: char) -> Result<Kind, Error> {
    let text = text.trim();
    let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let upper = word.to_ascii_uppercase();
    let (fl, rest) = flags(rest);
    let no_flags = |fl: Vec<(String, Option<String>)>| take_flags(line, &upper, fl, &[], &[]);
    Ok(match upper.as_str() {
        "FROM" => {
            let fl = take_flags(line, "FROM", fl, &["platform"], &[])?;
            let w = split_raw(rest, escape);
            let (image, alias) = match w.as_slice() {
                [i] => (i.clone(), None),
                [i, a, n] if a.eq_ignore_ascii_case("as") => {
                    let n = n.to_ascii_lowercase();
                    let valid = n.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                        && n.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
                    if !valid {
                        return Err(Error::at(
                            line,
                            format!("invalid name for build stage: {n:?} (letters, digits, _ - .)"),
                        ));
                    }
                    (i.clone(), Some(n))
                }
                _ => {
                    return Err(Error::at(
                        line,
                        "FROM takes an image and an optional AS name: FROM IMAGE [AS NAME]",
                    ));
                }
            };
            Kind::From {
                image,
                alias,
                platform: flag(&fl, "platform"),
            }
        }
        "RUN" => {
            let fl = take_flags(line, "RUN", fl, &["network"], &["mount", "security"])?;
            let network = flag(&fl, "network");
            if let Some(n) = &network
                && !["default", "none", "host"].contains(&n.as_str())
            {
                return Err(Error::at(
                    line,
                    format!("RUN --network={n}: one of default, none, host"),
                ));
            }
            let command = command(rest);
            if let Command::Shell(s) = &command {
                if s.is_empty() {
                    return Err(Error::at(line, "RUN needs a command"));
                }
                heredoc(line, &split_raw(s, escape))?;
            }
            Kind::Run { command, network }
        }
        "COPY" | "ADD" => {
            let add = upper == "ADD";
            let allowed: &[&str] = if add {
                &["chown", "chmod"]
            } else {
                &["chown", "chmod", "from"]
            };
            let unsupported: &[&str] = if add {
                &["checksum", "keep-git-dir", "link", "exclude"]
            } else {
                &["link", "parents", "exclude"]
            };
            let fl = take_flags(line, &upper, fl, allowed, unsupported)?;
            let (mut all, json) = match json_array(rest) {
                Some(v) => (v, true),
                None => (split_raw(rest, escape), false),
            };
            if !json {
                heredoc(line, &all)?;
            }
            if all.len() < 2 {
                return Err(Error::at(
                    line,
                    format!("{upper} needs at least one source and a destination"),
                ));
            }
            let dest = all.pop().unwrap_or_default();
            if add
                && let Some(url) = all.iter().find(|s| {
                    let s = s.to_ascii_lowercase();
                    s.starts_with("http://") || s.starts_with("https://") || s.starts_with("git@")
                })
            {
                return Err(Error::at(
                    line,
                    format!(
                        "ADD {url}: remote sources are not fetched (dcpp builds without the \
                         internet): put the file in the build context and COPY it"
                    ),
                ));
            }
            let c = Copy {
                sources: all,
                dest,
                from: flag(&fl, "from"),
                chown: flag(&fl, "chown"),
                chmod: flag(&fl, "chmod"),
                json,
            };
            if add { Kind::Add(c) } else { Kind::Copy(c) }
        }
        "ENV" => {
            no_flags(fl)?;
            Kind::Env(pairs(line, "ENV", rest, escape)?)
        }
        "LABEL" => {
            no_flags(fl)?;
            Kind::Label(pairs(line, "LABEL", rest, escape)?)
        }
        "ARG" => {
            no_flags(fl)?;
            let w = split_raw(rest, escape);
            if w.is_empty() {
                return Err(Error::at(line, "ARG needs a name"));
            }
            let mut out = Vec::new();
            for a in w {
                let (k, v) = match a.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (a.clone(), None),
                };
                if k.is_empty() {
                    return Err(Error::at(
                        line,
                        format!("ARG: a name can not be blank ({a})"),
                    ));
                }
                out.push((k, v));
            }
            Kind::Arg(out)
        }
        "WORKDIR" => {
            no_flags(fl)?;
            Kind::Workdir(one(line, "WORKDIR", rest)?)
        }
        "USER" => {
            no_flags(fl)?;
            Kind::User(one(line, "USER", rest)?)
        }
        "STOPSIGNAL" => {
            no_flags(fl)?;
            Kind::Stopsignal(one(line, "STOPSIGNAL", rest)?)
        }
        "MAINTAINER" => {
            no_flags(fl)?;
            Kind::Maintainer(one(line, "MAINTAINER", rest)?)
        }
        "EXPOSE" => {
            no_flags(fl)?;
            let w = split_raw(rest, escape);
            if w.is_empty() {
                return Err(Error::at(line, "EXPOSE needs a port"));
            }
            Kind::Expose(w)
        }
        "VOLUME" => {
            no_flags(fl)?;
            let w = json_array(rest).unwrap_or_else(|| split_raw(rest, escape));
            if w.is_empty() || w.iter().any(|v| v.trim().is_empty()) {
                return Err(Error::at(line, "VOLUME needs a path (and no empty ones)"));
            }
            Kind::Volume(w)
        }
        "CMD" | "ENTRYPOINT" => {
            no_flags(fl)?;
            let c = command(rest);
            if upper == "CMD" {
                Kind::Cmd(c)
            } else {
                Kind::Entrypoint(c)
            }
        }
        "SHELL" => {
            no_flags(fl)?;
            match json_array(rest) {
                Some(v) if !v.is_empty() => Kind::Shell(v),
                _ => {
                    return Err(Error::at(
                        line,
                        "SHELL requires the arguments to be in JSON form: SHELL [\"executable\", \"parameters\"]",
                    ));
                }
            }
        }
        "HEALTHCHECK" => {
            let fl = take_flags(
                line,
                "HEALTHCHECK",
                fl,
                &[
                    "interval",
                    "timeout",
                    "start-period",
                    "start-interval",
                    "retries",
                ],
                &[],
            )?;
            let (what, cmd) = rest
                .trim()
                .split_once(char::is_whitespace)
                .unwrap_or((rest.trim(), ""));
            match what.to_ascii_uppercase().as_str() {
                "NONE" if cmd.trim().is_empty() && fl.is_empty() => Kind::Healthcheck(Health::None),
                "NONE" => {
                    return Err(Error::at(
                        line,
                        "HEALTHCHECK NONE takes no arguments or flags",
                    ));
                }
                "CMD" if !cmd.trim().is_empty() => Kind::Healthcheck(Health::Check {
                    test: command(cmd),
                    interval: flag(&fl, "interval"),
                    timeout: flag(&fl, "timeout"),
                    start_period: flag(&fl, "start-period"),
                    start_interval: flag(&fl, "start-interval"),
                    retries: flag(&fl, "retries"),
                }),
                _ => {
                    return Err(Error::at(
                        line,
                        "HEALTHCHECK takes NONE or CMD followed by a command",
                    ));
                }
            }
        }
        "ONBUILD" => {
            return Err(Error::at(
                line,
                "ONBUILD is not supported by dcpp's builder (it runs in the builds of images \
                 FROM this one)",
            ));
        }
        _ => return Err(Error::at(line, format!("unknown instruction: {word}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(usize, Kind)> {
        parse(text)
            .unwrap()
            .instructions
            .into_iter()
            .map(|i| (i.line, i.kind))
            .collect()
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn continuations_comments_and_blank_lines_as_docker_joins_them() {
        let k = kinds(
            "# a comment\n\nFROM busybox\nRUN echo a \\\n  # a comment inside\n\n  && echo b \\  \n  c\nCMD [\"sh\"]\n",
        );
        assert_eq!(
            k,
            [
                (
                    3,
                    Kind::From {
                        image: "busybox".into(),
                        alias: None,
                        platform: None
                    }
                ),
                (
                    4,
                    Kind::Run {
                        command: Command::Shell("echo a   && echo b   c".into()),
                        network: None
                    }
                ),
                (9, Kind::Cmd(Command::Exec(vec!["sh".into()]))),
            ]
        );
        // A continuation at the end of the file ends the instruction there.
        assert_eq!(kinds("FROM a\nRUN true \\").len(), 2);
    }

    #[test]
    fn directives_only_at_the_top_and_the_escape_character_changes() {
        let d = parse(
            "# syntax=docker/dockerfile:1\n# escape=`\nFROM a\nRUN echo `\n b\nWORKDIR C:\\x\n",
        )
        .unwrap();
        assert_eq!(d.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(d.escape, '`');
        assert_eq!(
            d.instructions[1].kind,
            Kind::Run {
                command: Command::Shell("echo  b".into()),
                network: None
            }
        );
        assert_eq!(d.instructions[2].kind, Kind::Workdir("C:\\x".into()));
        // After a comment or a blank line, `# escape=` is a comment.
        assert_eq!(parse("# hello\n# escape=`\nFROM a\n").unwrap().escape, '\\');
        assert_eq!(parse("\n# escape=`\nFROM a\n").unwrap().escape, '\\');
        assert_eq!(
            err("# escape=x\nFROM a"),
            "Dockerfile:1: invalid escape token 'x' does not match ` or \\"
        );
        assert_eq!(
            err("# escape=`\n# escape=\\\nFROM a"),
            "Dockerfile:2: only one escape parser directive can be used"
        );
    }

    #[test]
    fn forms_flags_and_stages() {
        let k = kinds(
            "ARG V=1\nFROM --platform=linux/amd64 busybox:${V} AS Build\nRUN --network=none [\"sh\", \"-c\", \"x\"]\nRUN [not json\nCOPY --from=build --chown=1:2 --chmod=0755 a \"b c\" /dst/\nADD [\"x y\", \"/z\"]\nENV A=1 B=\"two words\"\nENV LEGACY some value\nARG X Y=2\nLABEL a=b\nEXPOSE 80/tcp 53/udp\nVOLUME [\"/v\"]\nVOLUME /a /b\nSHELL [\"/bin/sh\", \"-ec\"]\nHEALTHCHECK --interval=5s --retries=3 CMD wget -q localhost\nHEALTHCHECK NONE\nSTOPSIGNAL SIGQUIT\nUSER 1000:1000\nentrypoint [\"/init\"]\n",
        );
        let k: Vec<Kind> = k.into_iter().map(|(_, k)| k).collect();
        assert_eq!(
            k[1],
            Kind::From {
                image: "busybox:${V}".into(),
                alias: Some("build".into()),
                platform: Some("linux/amd64".into())
            }
        );
        assert_eq!(
            k[2],
            Kind::Run {
                command: Command::Exec(vec!["sh".into(), "-c".into(), "x".into()]),
                network: Some("none".into())
            }
        );
        assert_eq!(
            k[3],
            Kind::Run {
                command: Command::Shell("[not json".into()),
                network: None
            },
            "malformed JSON is the shell form"
        );
        assert_eq!(
            k[4],
            Kind::Copy(Copy {
                sources: vec!["a".into(), "\"b c\"".into()],
                dest: "/dst/".into(),
                from: Some("build".into()),
                chown: Some("1:2".into()),
                chmod: Some("0755".into()),
                json: false
            })
        );
        assert!(matches!(&k[5], Kind::Add(c) if c.sources == ["x y"] && c.dest == "/z" && c.json));
        assert_eq!(
            k[6],
            Kind::Env(vec![
                ("A".into(), "1".into()),
                ("B".into(), "\"two words\"".into())
            ])
        );
        assert_eq!(
            k[7],
            Kind::Env(vec![("LEGACY".into(), "some value".into())])
        );
        assert_eq!(
            k[8],
            Kind::Arg(vec![("X".into(), None), ("Y".into(), Some("2".into()))])
        );
        assert_eq!(k[10], Kind::Expose(vec!["80/tcp".into(), "53/udp".into()]));
        assert_eq!(k[11], Kind::Volume(vec!["/v".into()]));
        assert_eq!(k[12], Kind::Volume(vec!["/a".into(), "/b".into()]));
        assert_eq!(k[13], Kind::Shell(vec!["/bin/sh".into(), "-ec".into()]));
        assert!(
            matches!(&k[14], Kind::Healthcheck(Health::Check { test: Command::Shell(t), interval: Some(i), retries: Some(r), timeout: None, .. })
            if t == "wget -q localhost" && i == "5s" && r == "3")
        );
        assert_eq!(k[15], Kind::Healthcheck(Health::None));
        assert_eq!(
            k[18],
            Kind::Entrypoint(Command::Exec(vec!["/init".into()])),
            "keywords in any case"
        );
    }

    #[test]
    fn what_docker_refuses_is_refused_with_its_line() {
        for (text, want) in [
            ("", "Dockerfile:1: the Dockerfile has no instructions"),
            (
                "# only a comment\n",
                "Dockerfile:1: the Dockerfile has no instructions",
            ),
            ("ARG A\n", "Dockerfile:1: the Dockerfile has no FROM"),
            (
                "RUN true\nFROM a\n",
                "Dockerfile:1: no build stage in current context: only ARG may come before the first FROM",
            ),
            (
                "FROM a\nFROB x\n",
                "Dockerfile:2: unknown instruction: FROB",
            ),
            (
                "FROM a\n\nCOPY only\n",
                "Dockerfile:3: COPY needs at least one source and a destination",
            ),
            (
                "FROM a\nCOPY --link a b\n",
                "Dockerfile:2: COPY --link is not supported by dcpp's builder",
            ),
            (
                "FROM a\nCOPY --frm=x a b\n",
                "Dockerfile:2: unknown flag: --frm (on COPY)",
            ),
            (
                "FROM a\nADD --from=x a b\n",
                "Dockerfile:2: unknown flag: --from (on ADD)",
            ),
            (
                "FROM a\nRUN --mount=type=cache,target=/x true\n",
                "Dockerfile:2: RUN --mount is not supported by dcpp's builder",
            ),
            (
                "FROM a\nRUN --network=bridge true\n",
                "Dockerfile:2: RUN --network=bridge: one of default, none, host",
            ),
            (
                "FROM a\nENV A\n",
                "Dockerfile:2: ENV A: a value is needed (ENV A=VALUE)",
            ),
            (
                "FROM a\nENV A=1 B\n",
                "Dockerfile:2: ENV: B is not NAME=VALUE (all pairs must be in that form)",
            ),
            (
                "FROM a\nSHELL sh -c\n",
                "Dockerfile:2: SHELL requires the arguments to be in JSON form: SHELL [\"executable\", \"parameters\"]",
            ),
            (
                "FROM a\nHEALTHCHECK --interval=1s NONE\n",
                "Dockerfile:2: HEALTHCHECK NONE takes no arguments or flags",
            ),
            (
                "FROM a AS 1x\n",
                "Dockerfile:1: invalid name for build stage: \"1x\" (letters, digits, _ - .)",
            ),
            (
                "FROM a b\n",
                "Dockerfile:1: FROM takes an image and an optional AS name: FROM IMAGE [AS NAME]",
            ),
            (
                "FROM a\nONBUILD RUN x\n",
                "Dockerfile:2: ONBUILD is not supported by dcpp's builder (it runs in the builds of images FROM this one)",
            ),
        ] {
            assert_eq!(err(text), want, "{text:?}");
        }
        assert!(
            err("FROM a\nADD https://example.org/x.tgz /x\n").starts_with(
                "Dockerfile:2: ADD https://example.org/x.tgz: remote sources are not fetched"
            )
        );
        assert!(
            err("FROM a\nRUN cat <<EOF > /x\n")
                .starts_with("Dockerfile:2: heredocs (<<EOF) are not supported")
        );
        assert!(err("FROM a\nCOPY <<-\"EOF\" /x\n").contains("heredocs"));
        // `<<` that is not a heredoc is the shell's business.
        assert!(parse("FROM a\nRUN echo $((1 << 2))\n").is_ok());
    }
}
