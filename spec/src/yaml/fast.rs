//! A scanner for the plain block-style YAML that compose files are almost always written in.
//!
//! The full parser spends most of the load time on a 1000-service file; this one reads the
//! common shapes (block mappings and sequences, single-line plain and quoted scalars, single-line
//! flow collections, anchors, aliases, comments) in one pass over the bytes. It yields the same
//! events, positions and anchor ids as the full parser for everything it accepts, and gives up
//! (`None`) on anything else: tabs, non-ASCII, tags, block scalars, escapes, multi-line scalars
//! or flows, several documents, odd indentation and every malformed input. The caller then runs
//! the full parser, so giving up is always safe and errors always come from the full parser.
//! The unit tests compare both parsers' events on the corpus and on mutated files.

use std::borrow::Cow;

use super::{Ev, Item};
use crate::error::Pos;

/// Longer lines go to the full parser: its simple-key look-ahead is bounded (1024 chars).
const MAX_LINE: usize = 900;
/// Deeper nesting goes to the full parser, which enforces its own limits.
const MAX_NESTING: usize = 64;

/// The events of `text`'s single document, or `None` when the full parser must read it.
pub(super) fn events(text: &str, file: u32) -> Option<Vec<Item<'_>>> {
    let b = text.as_bytes();
    if !b.iter().all(|&c| c == b'\n' || (b' '..=b'~').contains(&c)) {
        return None;
    }
    let mut s = Scanner {
        text,
        b,
        pos: 0,
        line: 1,
        file,
        // About one event per 8–10 bytes of compose text; capped so that a huge input that is
        // then declined does not reserve memory in proportion to its size.
        out: Vec::with_capacity((text.len() / 10).min(1 << 17)),
        anchors: Vec::new(),
        depth: 0,
    };
    let first = s.next_line()??;
    if first.indent != 0 {
        return None;
    }
    s.block_map(first, first.content, 0)?;
    if s.next_line()?.is_some() {
        return None;
    }
    Some(s.out)
}

/// A line holding something other than blanks or a comment.
#[derive(Clone, Copy)]
struct Line {
    start: usize,
    /// First non-blank byte.
    content: usize,
    /// The `\n` (or the end of the text).
    end: usize,
    indent: usize,
    no: u32,
}

struct Scanner<'i> {
    text: &'i str,
    b: &'i [u8],
    /// Start of the first line not consumed yet.
    pos: usize,
    line: u32,
    file: u32,
    out: Vec<Item<'i>>,
    /// (name, id, node complete): an alias names the latest definition.
    anchors: Vec<(&'i str, usize, bool)>,
    depth: usize,
}

/// Bytes that may not start a plain scalar (YAML indicators).
fn is_indicator(c: u8) -> bool {
    matches!(
        c,
        b'-' | b'?'
            | b':'
            | b','
            | b'['
            | b']'
            | b'{'
            | b'}'
            | b'#'
            | b'&'
            | b'*'
            | b'!'
            | b'|'
            | b'>'
            | b'\''
            | b'"'
            | b'%'
            | b'@'
            | b'`'
    )
}

fn is_key_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'/' | b'<')
}

fn is_anchor_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-')
}

impl<'i> Scanner<'i> {
    /// Skips blank and comment lines; `Some(None)` at the end of the text.
    fn next_line(&mut self) -> Option<Option<Line>> {
        let b = self.b;
        while self.pos < b.len() {
            let start = self.pos;
            let end = b[start..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |i| start + i);
            if end - start > MAX_LINE {
                return None;
            }
            let content = self.skip_spaces(start, end);
            if content < end && b[content] != b'#' {
                if content == start
                    && (b[start..end].starts_with(b"---") || b[start..end].starts_with(b"..."))
                {
                    return None;
                }
                return Some(Some(Line {
                    start,
                    content,
                    end,
                    indent: content - start,
                    no: self.line,
                }));
            }
            self.pos = end + 1;
            self.line += 1;
        }
        Some(None)
    }

    fn consume(&mut self, l: Line) {
        self.pos = l.end + 1;
        self.line = l.no + 1;
    }

    fn skip_spaces(&self, mut i: usize, end: usize) -> usize {
        while i < end && self.b[i] == b' ' {
            i += 1;
        }
        i
    }

    fn pos(&self, l: &Line, at: usize) -> Pos {
        Pos {
            file: self.file,
            line: l.no,
            col: (at - l.start + 1) as u32,
        }
    }

    fn push(&mut self, ev: Ev<'i>, pos: Pos, anchor: usize) {
        self.out.push(Item {
            ev,
            pos,
            anchor,
            tag: None,
        });
    }

    fn scalar(&mut self, value: &'i str, plain: bool, pos: Pos, anchor: usize) {
        self.push(
            Ev::Scalar {
                value: Cow::Borrowed(value),
                plain,
                tagged: false,
            },
            pos,
            anchor,
        );
        self.complete(anchor);
    }

    fn complete(&mut self, anchor: usize) {
        if anchor != 0
            && let Some(a) = self.anchors.iter_mut().rev().find(|a| a.1 == anchor)
        {
            a.2 = true;
        }
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_NESTING).then_some(())
    }

    /// A plain key at `at` followed by `:` and a blank or the end: (key, offset of the `:`).
    fn key(&self, at: usize, end: usize) -> Option<(&'i str, usize)> {
        let b = self.b;
        if at >= end
            || !(b[at].is_ascii_alphanumeric() || matches!(b[at], b'_' | b'.' | b'/' | b'<'))
        {
            return None;
        }
        let mut i = at + 1;
        while i < end && is_key_byte(b[i]) {
            i += 1;
        }
        (i < end && b[i] == b':' && (i + 1 == end || b[i + 1] == b' ') && i - at <= 256)
            .then(|| (&self.text[at..i], i))
    }

    /// `&name` at `at`, followed by a blank or the end: (anchor id, offset after the name).
    fn anchor(&mut self, at: usize, end: usize) -> Option<(usize, usize)> {
        let b = self.b;
        let mut i = at + 1;
        while i < end && is_anchor_byte(b[i]) {
            i += 1;
        }
        if i == at + 1 || (i < end && b[i] != b' ') {
            return None;
        }
        let id = self.anchors.len() + 1;
        self.anchors.push((&self.text[at + 1..i], id, false));
        Some((id, i))
    }

    /// `*name` at `at`, ending at a blank, the end, or (in a flow) `,`, `]` or `}`.
    fn alias(&mut self, l: &Line, at: usize, flow: bool) -> Option<usize> {
        let b = self.b;
        let mut i = at + 1;
        while i < l.end && is_anchor_byte(b[i]) {
            i += 1;
        }
        let stop_ok = i == l.end || b[i] == b' ' || (flow && matches!(b[i], b',' | b']' | b'}'));
        if i == at + 1 || !stop_ok {
            return None;
        }
        let name = &self.text[at + 1..i];
        let &(_, id, complete) = self.anchors.iter().rev().find(|a| a.0 == name)?;
        if !complete {
            return None;
        }
        let pos = self.pos(l, at);
        self.push(Ev::Alias(id), pos, 0);
        Some(i)
    }

    /// A single-line quoted scalar at `at` without escapes: the offset after its closing quote.
    fn quoted(&mut self, l: &Line, at: usize, anchor: usize) -> Option<usize> {
        let b = self.b;
        let q = b[at];
        let close = at + 1 + b[at + 1..l.end].iter().position(|&c| c == q)?;
        let body = &b[at + 1..close];
        if (q == b'"' && body.contains(&b'\\')) || (q == b'\'' && b.get(close + 1) == Some(&b'\''))
        {
            return None;
        }
        let pos = self.pos(l, at);
        self.scalar(&self.text[at + 1..close], false, pos, anchor);
        Some(close + 1)
    }

    /// Only blanks or a comment from `at` to the end of the line.
    fn rest_is_comment(&self, at: usize, end: usize) -> Option<()> {
        let i = self.skip_spaces(at, end);
        (i == end || (i > at && self.b[i] == b'#')).then_some(())
    }

    fn plain_start_ok(&self, at: usize, end: usize) -> bool {
        let c = self.b[at];
        !is_indicator(c) || (c == b'-' && at + 1 < end && self.b[at + 1].is_ascii_alphanumeric())
    }

    /// A node written on the rest of line `l` from `at`: scalar, alias or flow collection.
    fn inline(&mut self, l: Line, at: usize, anchor: usize) -> Option<()> {
        let b = self.b;
        let after = match b[at] {
            b'*' if anchor == 0 => self.alias(&l, at, false)?,
            b'{' | b'[' => self.flow(&l, at, anchor)?,
            b'"' | b'\'' => self.quoted(&l, at, anchor)?,
            _ => {
                if !self.plain_start_ok(at, l.end) {
                    return None;
                }
                // A comment starts at a `#` after a blank; trailing blanks are not content.
                let mut stop = l.end;
                let mut i = at + 1;
                while i < l.end {
                    match b[i] {
                        b'#' if b[i - 1] == b' ' => {
                            stop = i;
                            break;
                        }
                        // `: ` or a final `:` would make this a key.
                        b':' if i + 1 == l.end || b[i + 1] == b' ' => return None,
                        _ => {}
                    }
                    i += 1;
                }
                while b[stop - 1] == b' ' {
                    stop -= 1;
                }
                let pos = self.pos(&l, at);
                self.scalar(&self.text[at..stop], true, pos, anchor);
                l.end
            }
        };
        self.rest_is_comment(after, l.end)?;
        self.consume(l);
        Some(())
    }

    /// A block mapping whose first key is at `at` on line `l`; its keys sit at that column.
    fn block_map(&mut self, mut l: Line, mut at: usize, anchor: usize) -> Option<()> {
        self.enter()?;
        let col = at - l.start;
        let pos = self.pos(&l, at);
        self.push(Ev::MapStart, pos, anchor);
        loop {
            let (key, colon) = self.key(at, l.end)?;
            let kpos = self.pos(&l, at);
            self.scalar(key, true, kpos, 0);
            self.value(l, colon, col)?;
            match self.next_line()? {
                Some(n) if n.indent == col => {
                    l = n;
                    at = n.content;
                }
                Some(n) if n.indent < col => break,
                None => break,
                Some(_) => return None,
            }
        }
        let end = self.pos(&l, l.end);
        self.push(Ev::MapEnd, end, 0);
        self.complete(anchor);
        self.depth -= 1;
        Some(())
    }

    /// The value after the `:` at `colon` of a key at column `col`.
    fn value(&mut self, l: Line, colon: usize, col: usize) -> Option<()> {
        let b = self.b;
        let mut at = self.skip_spaces(colon + 1, l.end);
        let mut anchor = 0;
        if at < l.end && b[at] == b'&' {
            let (id, after) = self.anchor(at, l.end)?;
            anchor = id;
            at = self.skip_spaces(after, l.end);
        }
        if at < l.end && b[at] != b'#' {
            return self.inline(l, at, anchor);
        }
        self.consume(l);
        match self.next_line()? {
            Some(n) if n.indent > col => {
                if self.is_dash(&n) {
                    self.block_seq(n, anchor, false)
                } else if self.key(n.content, n.end).is_some() {
                    self.block_map(n, n.content, anchor)
                } else {
                    None
                }
            }
            Some(n) if n.indent == col && self.is_dash(&n) => self.block_seq(n, anchor, true),
            _ if anchor == 0 => {
                // An empty value is a null placed at the `:`, as the full parser does.
                let pos = self.pos(&l, colon);
                self.scalar("~", true, pos, 0);
                Some(())
            }
            _ => None,
        }
    }

    fn is_dash(&self, l: &Line) -> bool {
        self.b[l.content] == b'-' && (l.content + 1 == l.end || self.b[l.content + 1] == b' ')
    }

    /// A block sequence whose first `-` starts line `l`. An indentless one (at the column of
    /// its parent's keys) is placed at its first item, as the full parser does.
    fn block_seq(&mut self, mut l: Line, anchor: usize, indentless: bool) -> Option<()> {
        self.enter()?;
        let col = l.indent;
        let start = self.out.len();
        let pos = self.pos(&l, l.content);
        self.push(Ev::SeqStart, pos, anchor);
        loop {
            let b = self.b;
            let at = self.skip_spaces(l.content + 1, l.end);
            if at == l.end
                || b[at] == b'#'
                || (b[at] == b'-' && (at + 1 == l.end || b[at + 1] == b' '))
            {
                return None;
            }
            if indentless && self.out.len() == start + 1 {
                if matches!(b[at], b'&' | b'*') {
                    return None;
                }
                self.out[start].pos = self.pos(&l, at);
            }
            if self.key(at, l.end).is_some() {
                self.block_map(l, at, 0)?;
            } else if b[at] == b'&' {
                let (id, after) = self.anchor(at, l.end)?;
                let v = self.skip_spaces(after, l.end);
                if v == l.end || b[v] == b'#' || self.key(v, l.end).is_some() {
                    return None;
                }
                self.inline(l, v, id)?;
            } else {
                self.inline(l, at, 0)?;
            }
            match self.next_line()? {
                Some(n) if n.indent == col && self.is_dash(&n) => l = n,
                Some(n) if n.indent < col || (indentless && n.indent == col) => break,
                None => break,
                Some(_) => return None,
            }
        }
        let end = self.pos(&l, l.end);
        self.push(Ev::SeqEnd, end, 0);
        self.complete(anchor);
        self.depth -= 1;
        Some(())
    }

    /// A flow collection at `at` that closes on the same line: the offset after it.
    fn flow(&mut self, l: &Line, at: usize, anchor: usize) -> Option<usize> {
        self.enter()?;
        let b = self.b;
        let end = l.end;
        let map = b[at] == b'{';
        let close = if map { b'}' } else { b']' };
        let pos = self.pos(l, at);
        self.push(if map { Ev::MapStart } else { Ev::SeqStart }, pos, anchor);
        let mut i = self.skip_spaces(at + 1, end);
        if i < end && b[i] == close {
            i += 1;
        } else {
            loop {
                if map {
                    let (key, colon) = self.key(i, end)?;
                    if colon + 1 == end {
                        return None;
                    }
                    let kpos = self.pos(l, i);
                    self.scalar(key, true, kpos, 0);
                    i = self.skip_spaces(colon + 1, end);
                }
                if i >= end {
                    return None;
                }
                i = match b[i] {
                    b'{' | b'[' => self.flow(l, i, 0)?,
                    b'"' | b'\'' => self.quoted(l, i, 0)?,
                    b'*' => self.alias(l, i, true)?,
                    _ => {
                        if !self.plain_start_ok(i, end) {
                            return None;
                        }
                        let mut j = i + 1;
                        while j < end
                            && !matches!(b[j], b',' | b'[' | b']' | b'{' | b'}' | b':' | b'#')
                        {
                            j += 1;
                        }
                        let mut stop = j;
                        while b[stop - 1] == b' ' {
                            stop -= 1;
                        }
                        let pos = self.pos(l, i);
                        self.scalar(&self.text[i..stop], true, pos, 0);
                        j
                    }
                };
                i = self.skip_spaces(i, end);
                if i >= end {
                    return None;
                }
                if b[i] == close {
                    i += 1;
                    break;
                }
                if b[i] != b',' {
                    return None;
                }
                i = self.skip_spaces(i + 1, end);
                if i >= end || b[i] == close {
                    return None;
                }
            }
        }
        let end_pos = self.pos(l, i - 1);
        self.push(if map { Ev::MapEnd } else { Ev::SeqEnd }, end_pos, 0);
        self.complete(anchor);
        self.depth -= 1;
        Some(i)
    }
}
