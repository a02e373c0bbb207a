//! A YAML node tree that keeps the file, line and column of every key and value.
//!
//! Built from the pure-Rust granit parser (the one serde-saphyr uses) rather than deserialised
//! straight into types: compose semantics (interpolation after parsing, merging several files,
//! `extends`, short→long syntax) all work on an untyped tree, and every later error must still
//! point at the line and column it came from. Anchors, aliases and `<<` merge keys are resolved
//! here, with budgets against alias bombs and unbounded nesting.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};

use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, Span};

use crate::error::{Errors, Pos};

/// Total nodes one document may expand to through aliases.
const MAX_NODES: usize = 2_000_000;
/// Maximum nesting depth after alias expansion.
const MAX_DEPTH: usize = 512;

/// Compose's YAML tags that change how override files merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MergeTag {
    /// `!reset`: drop the value inherited from earlier files.
    Reset,
    /// `!override`: replace instead of merging.
    Override,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub pos: Pos,
    pub tag: Option<MergeTag>,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Null,
    /// A scalar's text; `plain` is false for quoted and block scalars.
    Scalar {
        value: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

impl Node {
    pub fn new(pos: Pos, kind: Kind) -> Node {
        Node {
            pos,
            tag: None,
            kind,
        }
    }

    pub fn str(pos: Pos, s: impl Into<String>) -> Node {
        Node::new(
            pos,
            Kind::Scalar {
                value: s.into(),
                plain: false,
            },
        )
    }

    pub fn map(pos: Pos, entries: Vec<Entry>) -> Node {
        Node::new(pos, Kind::Map(entries))
    }

    pub fn as_map(&self) -> Option<&Vec<Entry>> {
        match &self.kind {
            Kind::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_map_mut(&mut self) -> Option<&mut Vec<Entry>> {
        match &mut self.kind {
            Kind::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|e| e.key == key)
            .map(|e| &e.value)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        self.as_map_mut()?
            .iter_mut()
            .find(|e| e.key == key)
            .map(|e| &mut e.value)
    }

    pub fn scalar(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            Kind::Null => "null",
            Kind::Scalar { .. } => "a scalar",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }

    fn count(&self) -> usize {
        match &self.kind {
            Kind::Null | Kind::Scalar { .. } => 1,
            Kind::Seq(s) => 1 + s.iter().map(Node::count).sum::<usize>(),
            Kind::Map(m) => 1 + m.iter().map(|e| e.value.count()).sum::<usize>(),
        }
    }

    fn depth(&self) -> usize {
        match &self.kind {
            Kind::Null | Kind::Scalar { .. } => 1,
            Kind::Seq(s) => 1 + s.iter().map(Node::depth).max().unwrap_or(0),
            Kind::Map(m) => 1 + m.iter().map(|e| e.value.depth()).max().unwrap_or(0),
        }
    }
}

struct Builder<'a> {
    file: u32,
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
    errors: &'a mut Errors,
    hasher: RandomState,
}

fn pos_of(file: u32, span: &Span) -> Pos {
    Pos {
        file,
        line: span.start.line() as u32,
        col: span.start.col() as u32 + 1,
    }
}

/// Parses the first document of `text`. Returns `None` (with errors recorded) when the YAML is
/// malformed; an empty document is an empty mapping.
pub(crate) fn parse(text: &str, file: u32, errors: &mut Errors) -> Option<Node> {
    // Comments carry no data; not emitting them saves the parser work.
    let options = serde_saphyr::granit_parser::options! { emit_comments: false };
    let mut parser = Parser::new_from_str_with_options(text, options);
    let mut b = Builder {
        file,
        anchors: HashMap::new(),
        nodes: 0,
        errors,
        hasher: RandomState::new(),
    };
    let mut root: Option<Node> = None;
    let mut docs = 0;
    while let Some((ev, span)) = b.next(&mut parser)? {
        match ev {
            Event::StreamStart | Event::DocumentEnd => {}
            Event::StreamEnd => break,
            Event::DocumentStart(..) => {
                docs += 1;
                if docs > 1 {
                    b.errors.push(
                        pos_of(file, &span),
                        "",
                        "multiple YAML documents in one compose file are not supported",
                    );
                    return None;
                }
            }
            other => {
                let node = b.node(other, span, &mut parser, 1)?;
                root = Some(node);
            }
        }
    }
    Some(root.unwrap_or_else(|| {
        Node::map(
            Pos {
                file,
                line: 1,
                col: 1,
            },
            Vec::new(),
        )
    }))
}

type Ev<'i> = (Event<'i>, Span);

impl Builder<'_> {
    fn next<'i>(
        &mut self,
        p: &mut Parser<'i, impl serde_saphyr::granit_parser::BorrowedInput<'i>>,
    ) -> Option<Option<Ev<'i>>> {
        loop {
            match p.next_event() {
                None => return Some(None),
                Some(Err(e)) => {
                    let m = e.marker();
                    self.errors.push(
                        Pos {
                            file: self.file,
                            line: m.line() as u32,
                            col: m.col() as u32 + 1,
                        },
                        "",
                        format!("invalid YAML: {}", e.info()),
                    );
                    return None;
                }
                Some(Ok((ev, span))) => {
                    if matches!(
                        ev,
                        Event::StreamStart
                            | Event::StreamEnd
                            | Event::DocumentStart(..)
                            | Event::DocumentEnd
                            | Event::Alias(_)
                            | Event::Scalar(..)
                            | Event::SequenceStart(..)
                            | Event::SequenceEnd
                            | Event::MappingStart(..)
                            | Event::MappingEnd
                    ) {
                        return Some(Some((ev, span)));
                    }
                    // Comments and anchor metadata carry no data.
                }
            }
        }
    }

    fn too_big(&mut self, pos: Pos, what: &str) -> Option<Node> {
        self.errors
            .push(pos, "", format!("document too large: {what}"));
        None
    }

    fn node<'i>(
        &mut self,
        ev: Event<'i>,
        span: Span,
        p: &mut Parser<'i, impl serde_saphyr::granit_parser::BorrowedInput<'i>>,
        depth: usize,
    ) -> Option<Node> {
        let pos = pos_of(self.file, &span);
        if depth > MAX_DEPTH {
            return self.too_big(pos, "nested too deeply");
        }
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return self.too_big(pos, "too many nodes after alias expansion");
        }
        let (node, anchor) = match ev {
            Event::Alias(id) => {
                let Some((n, d)) = self.anchors.get(&id) else {
                    self.errors.push(pos, "", "alias to an unknown anchor");
                    return None;
                };
                if depth + d > MAX_DEPTH {
                    return self.too_big(pos, "nested too deeply");
                }
                let count = n.count();
                self.nodes += count;
                if self.nodes > MAX_NODES {
                    return self.too_big(pos, "too many nodes after alias expansion");
                }
                // The copy keeps the anchor's positions: that is where its content was written.
                (n.clone(), 0)
            }
            Event::Scalar(value, style, anchor, tag) => {
                let plain = style == ScalarStyle::Plain;
                let mut node = if plain
                    && tag.is_none()
                    && matches!(&*value, "" | "~" | "null" | "Null" | "NULL")
                {
                    Node::new(pos, Kind::Null)
                } else {
                    Node::new(
                        pos,
                        Kind::Scalar {
                            value: value.into_owned(),
                            plain,
                        },
                    )
                };
                node.tag = tag.as_deref().and_then(merge_tag);
                (node, anchor)
            }
            Event::SequenceStart(_, anchor, tag) => {
                let mut items = Vec::new();
                loop {
                    let (ev, span) = self.next(p)??;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(ev, span, p, depth + 1)?);
                }
                let mut node = Node::new(pos, Kind::Seq(items));
                node.tag = tag.as_deref().and_then(merge_tag);
                (node, anchor)
            }
            Event::MappingStart(_, anchor, tag) => {
                let mut entries: Vec<Entry> = Vec::new();
                let mut merges: Vec<Node> = Vec::new();
                // Key hashes make the duplicate check linear for big maps (1000s of services).
                let mut seen: HashSet<u64> = HashSet::new();
                loop {
                    let (ev, span) = self.next(p)??;
                    if matches!(ev, Event::MappingEnd) {
                        break;
                    }
                    let key_pos = pos_of(self.file, &span);
                    let key_node = self.node(ev, span, p, depth + 1)?;
                    let (kev, kspan) = self.next(p)??;
                    let value = self.node(kev, kspan, p, depth + 1)?;
                    let key = match key_node.kind {
                        Kind::Scalar { value: k, plain } => {
                            if plain && k == "<<" {
                                merges.push(value);
                                continue;
                            }
                            k
                        }
                        Kind::Null => "null".to_owned(),
                        _ => {
                            self.errors
                                .push(key_pos, "", "mapping keys must be scalars");
                            continue;
                        }
                    };
                    // Small maps (almost all) scan linearly; big ones switch to hashes.
                    let dup = if entries.len() < 16 {
                        true
                    } else {
                        if seen.is_empty() {
                            seen.extend(entries.iter().map(|e| self.hasher.hash_one(&e.key)));
                        }
                        !seen.insert(self.hasher.hash_one(&key))
                    };
                    if let Some(prev) = entries.iter().filter(|_| dup).find(|e| e.key == key) {
                        let line = prev.key_pos.line;
                        self.errors.push(
                            key_pos,
                            "",
                            format!("mapping key {key:?} already defined at line {line}"),
                        );
                        continue;
                    }
                    entries.push(Entry {
                        key,
                        key_pos,
                        value,
                    });
                }
                for m in merges {
                    self.apply_merge(&mut entries, m);
                }
                let mut node = Node::new(pos, Kind::Map(entries));
                node.tag = tag.as_deref().and_then(merge_tag);
                (node, anchor)
            }
            _ => {
                self.errors.push(pos, "", "unexpected YAML event");
                return None;
            }
        };
        if anchor != 0 {
            let d = node.depth();
            self.anchors.insert(anchor, (node.clone(), d));
        }
        Some(node)
    }

    /// `<<` semantics: keys already present win; in a list of maps, earlier maps win.
    fn apply_merge(&mut self, entries: &mut Vec<Entry>, m: Node) {
        let pos = m.pos;
        let sources = match m.kind {
            Kind::Map(_) => vec![m],
            Kind::Seq(items) => items,
            _ => {
                self.errors.push(
                    pos,
                    "",
                    "merge key `<<` needs a mapping or a list of mappings",
                );
                return;
            }
        };
        for src in sources {
            match src.kind {
                Kind::Map(src_entries) => {
                    for e in src_entries {
                        if !entries.iter().any(|x| x.key == e.key) {
                            entries.push(e);
                        }
                    }
                }
                _ => self.errors.push(
                    src.pos,
                    "",
                    "merge key `<<` needs a mapping or a list of mappings",
                ),
            }
        }
    }
}

fn merge_tag(t: &serde_saphyr::granit_parser::Tag) -> Option<MergeTag> {
    match (t.handle(), t.suffix()) {
        ("!", "reset") => Some(MergeTag::Reset),
        ("!", "override") => Some(MergeTag::Override),
        _ => None,
    }
}
