//! Dockerfiles as docker reads them: parser directives, comments, line continuations, JSON
//! and shell forms, flags, and every instruction dcpp builds with, each with its line. Then
//! [`stages`] resolves what a build runs: the stages the target needs, `FROM` with the global
//! arguments, and the arguments and environment in scope at each instruction.
//!
//! Nothing here reads files or runs anything: the builder feeds it the Dockerfile's text and
//! the base images' environments.

pub mod config;
pub mod ignore;
mod parse;
pub mod stages;
pub mod words;

pub use config::{Config, ImageConfig, cache_key};
pub use parse::parse;
pub use stages::{Plan, Scope, StageRef, plan};

use serde::Serialize;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A line of the Dockerfile docker would refuse (1-based line).
    #[error("Dockerfile:{line}: {message}")]
    Syntax { line: usize, message: String },
    /// A word that cannot be expanded (an unterminated quote, a bad `${…}`).
    #[error("{0}")]
    Word(String),
    /// What the build asks for does not fit the Dockerfile (an unknown target or stage).
    #[error("{0}")]
    Plan(String),
}

impl Error {
    fn at(line: usize, message: impl Into<String>) -> Error {
        Error::Syntax {
            line,
            message: message.into(),
        }
    }

    /// The same error, naming the line it came from (for a word expanded at build time).
    pub fn on_line(self, line: usize) -> Error {
        match self {
            Error::Word(m) | Error::Plan(m) => Error::at(line, m),
            e => e,
        }
    }
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dockerfile {
    /// `# syntax=` (recorded; dcpp builds with its own frontend whatever it names).
    pub syntax: Option<String>,
    /// `# escape=` (`\` unless set to `` ` ``).
    pub escape: char,
    pub instructions: Vec<Instruction>,
}

/// One instruction with the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instruction {
    pub line: usize,
    pub kind: Kind,
}

/// The exec (JSON) or shell form of `RUN`, `CMD` and `ENTRYPOINT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Command {
    Exec(Vec<String>),
    Shell(String),
}

/// `HEALTHCHECK`: `NONE` turns the base image's off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Health {
    None,
    Check {
        test: Command,
        interval: Option<String>,
        timeout: Option<String>,
        start_period: Option<String>,
        start_interval: Option<String>,
        retries: Option<String>,
    },
}

/// The instructions. Words that docker substitutes variables in are kept raw (quotes and
/// escapes included) and expanded by [`Scope::expand`] when the build reaches them, since the
/// values depend on the arguments and the base image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Kind {
    From {
        image: String,
        alias: Option<String>,
        platform: Option<String>,
    },
    Run {
        command: Command,
        /// `--network=default|none|host`.
        network: Option<String>,
    },
    Copy(Copy),
    Add(Copy),
    /// `KEY=value` pairs, raw.
    Env(Vec<(String, String)>),
    /// Names with their raw defaults.
    Arg(Vec<(String, Option<String>)>),
    Label(Vec<(String, String)>),
    Workdir(String),
    User(String),
    Expose(Vec<String>),
    Volume(Vec<String>),
    Cmd(Command),
    Entrypoint(Command),
    Shell(Vec<String>),
    Stopsignal(String),
    Healthcheck(Health),
    /// `MAINTAINER` (deprecated): docker sets the image's author.
    Maintainer(String),
}

/// `COPY`/`ADD`: sources and destination raw, with the flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Copy {
    pub sources: Vec<String>,
    pub dest: String,
    /// `--from=stage|index|image` (`COPY` only).
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    /// Whether the sources were in the JSON form (no splitting on spaces).
    pub json: bool,
}
