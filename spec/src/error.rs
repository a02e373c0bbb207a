//! Errors and warnings, each tied to a file, line, column and key path.

use std::fmt;

/// A position in one of the loaded files (`file` indexes the loader's file table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct Pos {
    pub file: u32,
    pub line: u32,
    pub col: u32,
}

/// Collects problems while loading so that all of them can be reported at once.
#[derive(Debug, Default)]
pub(crate) struct Errors {
    pub items: Vec<(Pos, String, String)>,
}

impl Errors {
    pub fn push(&mut self, pos: Pos, path: impl Into<String>, msg: impl Into<String>) {
        self.items.push((pos, path.into(), msg.into()));
    }
}

/// One problem found in the compose files.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpecError {
    /// File as the user named it (or as resolved for `include`/`extends`); empty when the
    /// problem is not tied to a file (e.g. no compose file found).
    pub file: String,
    /// 1-based line, 0 when unknown.
    pub line: u32,
    /// 1-based column, 0 when unknown.
    pub column: u32,
    /// Key path such as `services.web.ports[1]`; empty for problems of the file as a whole.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.file.is_empty() {
            write!(f, "{}:", self.file)?;
            if self.line > 0 {
                write!(f, "{}:{}:", self.line, self.column)?;
            }
            f.write_str(" ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// All problems found while loading; the loader never stops at the first one it can skip.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors {
    /// In file, line, column order.
    pub errors: Vec<SpecError>,
    /// Warnings gathered before the errors stopped the load.
    pub warnings: Vec<SpecError>,
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A key path such as `services.web.ports[1]`, rendered only when a problem is reported: most
/// nodes never are, and building a string per node was a measurable part of loading.
#[derive(Debug, Clone, Copy)]
pub(crate) enum KeyPath<'p> {
    Root,
    /// A path given as text.
    Text(&'p str),
    Key(&'p KeyPath<'p>, &'p str),
    Index(&'p KeyPath<'p>, usize),
}

impl<'p> KeyPath<'p> {
    pub fn key(&'p self, key: &'p str) -> KeyPath<'p> {
        KeyPath::Key(self, key)
    }

    pub fn at(&'p self, index: usize) -> KeyPath<'p> {
        KeyPath::Index(self, index)
    }

    fn is_empty(&self) -> bool {
        match self {
            KeyPath::Root => true,
            KeyPath::Text(s) => s.is_empty(),
            KeyPath::Key(..) | KeyPath::Index(..) => false,
        }
    }
}

impl fmt::Display for KeyPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPath::Root => Ok(()),
            KeyPath::Text(s) => f.write_str(s),
            KeyPath::Key(parent, key) => {
                parent.fmt(f)?;
                if !parent.is_empty() {
                    f.write_str(".")?;
                }
                f.write_str(key)
            }
            KeyPath::Index(parent, i) => {
                parent.fmt(f)?;
                write!(f, "[{i}]")
            }
        }
    }
}
