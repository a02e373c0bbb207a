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
