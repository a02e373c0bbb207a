//! A YAML node tree that keeps the file, line and column of every key and value.
//!
//! Built from the pure-Rust granit parser (the one serde-saphyr uses) rather than deserialised
//! straight into types: compose semantics (interpolation after parsing, merging several files,
//! `extends`, short→long syntax) all work on an untyped tree, and every later error must still
//! point at the line and column it came from. Anchors, aliases and `<<` merge keys are resolved
//! here, with budgets against alias bombs and unbounded nesting.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};

use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, Span};

use crate::error::{Errors, Pos};

mod fast;

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

/// A node of the tree. Text borrows from the file it was read from where it can (`'a`), so
/// a large file does not cost one allocation per scalar.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node<'a> {
    pub pos: Pos,
    pub tag: Option<MergeTag>,
    pub kind: Kind<'a>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind<'a> {
    Null,
    /// A scalar's text; `plain` is false for quoted and block scalars.
    Scalar {
        value: Cow<'a, str>,
        plain: bool,
    },
    Seq(Vec<Node<'a>>),
    Map(Vec<Entry<'a>>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry<'a> {
    pub key: Cow<'a, str>,
    pub key_pos: Pos,
    pub value: Node<'a>,
}

impl<'a> Node<'a> {
    pub fn new(pos: Pos, kind: Kind<'a>) -> Node<'a> {
        Node {
            pos,
            tag: None,
            kind,
        }
    }

    pub fn str(pos: Pos, s: impl Into<Cow<'a, str>>) -> Node<'a> {
        Node::new(
            pos,
            Kind::Scalar {
                value: s.into(),
                plain: false,
            },
        )
    }

    pub fn map(pos: Pos, entries: Vec<Entry<'a>>) -> Node<'a> {
        Node::new(pos, Kind::Map(entries))
    }

    /// A copy that owns all its text, for trees kept beyond the file text they came from.
    pub fn into_owned(self) -> Node<'static> {
        let kind = match self.kind {
            Kind::Null => Kind::Null,
            Kind::Scalar { value, plain } => Kind::Scalar {
                value: Cow::Owned(value.into_owned()),
                plain,
            },
            Kind::Seq(items) => Kind::Seq(items.into_iter().map(Node::into_owned).collect()),
            Kind::Map(entries) => Kind::Map(
                entries
                    .into_iter()
                    .map(|e| Entry {
                        key: Cow::Owned(e.key.into_owned()),
                        key_pos: e.key_pos,
                        value: e.value.into_owned(),
                    })
                    .collect(),
            ),
        };
        Node {
            pos: self.pos,
            tag: self.tag,
            kind,
        }
    }

    pub fn as_map(&self) -> Option<&Vec<Entry<'a>>> {
        match &self.kind {
            Kind::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_map_mut(&mut self) -> Option<&mut Vec<Entry<'a>>> {
        match &mut self.kind {
            Kind::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node<'a>> {
        self.as_map()?
            .iter()
            .find(|e| e.key == key)
            .map(|e| &e.value)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node<'a>> {
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

/// A parser event reduced to what the tree needs, from either parser (see [`fast`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ev<'i> {
    Scalar {
        value: Cow<'i, str>,
        plain: bool,
        /// Any tag at all (not only compose's): a tagged `null` stays a string.
        tagged: bool,
    },
    SeqStart,
    SeqEnd,
    MapStart,
    MapEnd,
    Alias(usize),
    StreamStart,
    StreamEnd,
    DocStart,
    DocEnd,
}

/// One event with the start position and the node properties the tree keeps.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Item<'i> {
    pub ev: Ev<'i>,
    pub pos: Pos,
    /// Anchor id (0: none); ids only need to be consistent within one parse.
    pub anchor: usize,
    pub tag: Option<MergeTag>,
}

/// A stream of [`Item`]s. `None`: the parser failed (error recorded); `Some(None)`: the end.
trait Source<'i> {
    fn next_item(&mut self, errors: &mut Errors) -> Option<Option<Item<'i>>>;
}

/// The granit parser, for any input.
struct Granit<'i> {
    parser: Parser<'i, serde_saphyr::granit_parser::StrInput<'i>>,
    file: u32,
}

impl<'i> Source<'i> for Granit<'i> {
    fn next_item(&mut self, errors: &mut Errors) -> Option<Option<Item<'i>>> {
        loop {
            match self.parser.next_event() {
                None => return Some(None),
                Some(Err(e)) => {
                    let m = e.marker();
                    errors.push(
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
                    let (ev, anchor, tag) = match ev {
                        Event::StreamStart => (Ev::StreamStart, 0, None),
                        Event::StreamEnd => (Ev::StreamEnd, 0, None),
                        Event::DocumentStart(..) => (Ev::DocStart, 0, None),
                        Event::DocumentEnd => (Ev::DocEnd, 0, None),
                        Event::Alias(id) => (Ev::Alias(id), 0, None),
                        Event::Scalar(value, style, anchor, tag) => (
                            Ev::Scalar {
                                value,
                                plain: style == ScalarStyle::Plain,
                                tagged: tag.is_some(),
                            },
                            anchor,
                            tag.as_deref().and_then(merge_tag),
                        ),
                        Event::SequenceStart(_, anchor, tag) => {
                            (Ev::SeqStart, anchor, tag.as_deref().and_then(merge_tag))
                        }
                        Event::SequenceEnd => (Ev::SeqEnd, 0, None),
                        Event::MappingStart(_, anchor, tag) => {
                            (Ev::MapStart, anchor, tag.as_deref().and_then(merge_tag))
                        }
                        Event::MappingEnd => (Ev::MapEnd, 0, None),
                        // Comments and anchor metadata carry no data.
                        _ => continue,
                    };
                    return Some(Some(Item {
                        ev,
                        pos: pos_of(self.file, &span),
                        anchor,
                        tag,
                    }));
                }
            }
        }
    }
}

/// Events the fast scanner produced ahead of time; it never fails.
impl<'i> Source<'i> for std::vec::IntoIter<Item<'i>> {
    fn next_item(&mut self, _: &mut Errors) -> Option<Option<Item<'i>>> {
        Some(self.next())
    }
}

struct Builder<'a, 'i> {
    anchors: HashMap<usize, (Node<'i>, usize)>,
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

impl<'a> Builder<'a, '_> {
    fn new(errors: &'a mut Errors) -> Self {
        Builder {
            anchors: HashMap::new(),
            nodes: 0,
            errors,
            hasher: RandomState::new(),
        }
    }
}

/// Parses `text`; several documents are merged in order. Returns `None` (with errors recorded) when the YAML is
/// malformed; an empty document is an empty mapping.
pub(crate) fn parse<'i>(text: &'i str, file: u32, errors: &mut Errors) -> Option<Node<'i>> {
    // The common shape of compose files is read by a much cheaper scanner; anything it is not
    // sure about (and every malformed file) goes to the full parser, so results are the same.
    if let Some(items) = fast::events(text, file) {
        let mut src = items.into_iter();
        let mut b = Builder::new(errors);
        let first = src.next()?;
        return b.node(first, &mut src, 1);
    }
    // Comments carry no data; not emitting them saves the parser work.
    let options = serde_saphyr::granit_parser::options! { emit_comments: false };
    let mut src = Granit {
        parser: Parser::new_from_str_with_options(text, options),
        file,
    };
    let mut b = Builder::new(errors);
    let mut root: Option<Node> = None;
    while let Some(item) = b.next(&mut src)? {
        match item.ev {
            Ev::StreamStart | Ev::DocEnd | Ev::DocStart => {}
            Ev::StreamEnd => break,
            _ => {
                let node = b.node(item, &mut src, 1)?;
                root = Some(match root.take() {
                    None => node,
                    // Compose reads every document of a file and merges each over the ones
                    // before it, as it merges override files.
                    Some(prev) => {
                        if !matches!(node.kind, Kind::Map(_)) || !matches!(prev.kind, Kind::Map(_))
                        {
                            b.errors.push(
                                node.pos,
                                "",
                                "every YAML document of a compose file must be a mapping",
                            );
                            return None;
                        }
                        crate::merge::merge_files(prev, node)
                    }
                });
            }
        }
    }
    // No document at all (empty, or only comments): a null root, which the loader refuses.
    Some(root.unwrap_or_else(|| {
        Node::new(
            Pos {
                file,
                line: 1,
                col: 1,
            },
            Kind::Null,
        )
    }))
}

impl<'i> Builder<'_, 'i> {
    fn next(&mut self, src: &mut impl Source<'i>) -> Option<Option<Item<'i>>> {
        src.next_item(self.errors)
    }

    fn too_big(&mut self, pos: Pos, what: &str) -> Option<Node<'i>> {
        self.errors
            .push(pos, "", format!("document too large: {what}"));
        None
    }

    fn node(
        &mut self,
        item: Item<'i>,
        src: &mut impl Source<'i>,
        depth: usize,
    ) -> Option<Node<'i>> {
        let Item {
            ev,
            pos,
            anchor,
            tag,
        } = item;
        if depth > MAX_DEPTH {
            return self.too_big(pos, "nested too deeply");
        }
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return self.too_big(pos, "too many nodes after alias expansion");
        }
        let node = match ev {
            Ev::Alias(id) => {
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
                return Some(n.clone());
            }
            Ev::Scalar {
                value,
                plain,
                tagged,
            } => {
                let mut node =
                    if plain && !tagged && matches!(&*value, "" | "~" | "null" | "Null" | "NULL") {
                        Node::new(pos, Kind::Null)
                    } else {
                        Node::new(pos, Kind::Scalar { value, plain })
                    };
                node.tag = tag;
                node
            }
            Ev::SeqStart => {
                let mut items = Vec::new();
                loop {
                    let item = self.next(src)??;
                    if matches!(item.ev, Ev::SeqEnd) {
                        break;
                    }
                    items.push(self.node(item, src, depth + 1)?);
                }
                let mut node = Node::new(pos, Kind::Seq(items));
                node.tag = tag;
                node
            }
            Ev::MapStart => {
                let mut entries: Vec<Entry> = Vec::new();
                let mut merges: Vec<Node> = Vec::new();
                // Key hashes make the duplicate check linear for big maps (1000s of services).
                let mut seen: HashSet<u64> = HashSet::new();
                loop {
                    let item = self.next(src)??;
                    if matches!(item.ev, Ev::MapEnd) {
                        break;
                    }
                    let key_pos = item.pos;
                    let key_node = self.node(item, src, depth + 1)?;
                    let vitem = self.next(src)??;
                    let value = self.node(vitem, src, depth + 1)?;
                    let key = match key_node.kind {
                        Kind::Scalar { value: k, plain } => {
                            if plain && k == "<<" {
                                merges.push(value);
                                continue;
                            }
                            // compose decodes an unquoted `123:` or `true:` as a number or a
                            // boolean and refuses any key that is not a string.
                            if plain && let Some(kind) = crate::extensions::non_string(&k) {
                                self.errors.push(
                                    key_pos,
                                    "",
                                    format!(
                                        "non-string key {k}: compose reads it as {kind}; quote it"
                                    ),
                                );
                                continue;
                            }
                            k
                        }
                        Kind::Null => {
                            self.errors.push(
                                key_pos,
                                "",
                                "non-string key: compose reads an empty or null key as null; quote it",
                            );
                            continue;
                        }
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
                node.tag = tag;
                node
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
    fn apply_merge(&mut self, entries: &mut Vec<Entry<'i>>, m: Node<'i>) {
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

#[cfg(test)]
mod tests {
    //! The fast scanner must agree with the full parser on everything it accepts.

    use proptest::prelude::*;

    use super::*;

    /// The full parser's node events, or `None` when it rejects the text or finds two documents.
    fn full_events(text: &str) -> Option<Vec<Item<'_>>> {
        let options = serde_saphyr::granit_parser::options! { emit_comments: false };
        let mut src = Granit {
            parser: Parser::new_from_str_with_options(text, options),
            file: 1,
        };
        let mut errors = Errors::default();
        let mut out = Vec::new();
        let mut docs = 0;
        while let Some(item) = src.next_item(&mut errors)? {
            match item.ev {
                Ev::StreamStart | Ev::StreamEnd | Ev::DocEnd => {}
                Ev::DocStart => {
                    docs += 1;
                    if docs > 1 {
                        return None;
                    }
                }
                _ => out.push(item),
            }
        }
        Some(out)
    }

    /// End events carry no position the tree uses.
    fn comparable(items: Vec<Item<'_>>) -> Vec<Item<'_>> {
        items
            .into_iter()
            .map(|mut i| {
                if matches!(i.ev, Ev::SeqEnd | Ev::MapEnd) {
                    i.pos = Pos::default();
                }
                i
            })
            .collect()
    }

    /// How the fast scanner and the full parser disagree on one text.
    #[derive(Debug, PartialEq, thiserror::Error)]
    enum Disagreement {
        #[error("fast scanner accepted what the parser rejects:\n{text}")]
        AcceptedWhatParserRejects { text: String },
        #[error(
            "events differ at {at:?}: fast {fast} vs full {full} (lengths {fast_len} / {full_len}) for:\n{text}"
        )]
        EventsDiffer {
            at: Option<usize>,
            fast: String,
            full: String,
            fast_len: usize,
            full_len: usize,
            text: String,
        },
    }

    /// `Ok(true)` when the fast scanner accepted `text` and agreed; `Ok(false)` when it declined.
    fn agrees(text: &str) -> Result<bool, Disagreement> {
        let Some(fast) = fast::events(text, 1) else {
            return Ok(false);
        };
        let Some(full) = full_events(text) else {
            return Err(Disagreement::AcceptedWhatParserRejects {
                text: text.to_owned(),
            });
        };
        let (fast, full) = (comparable(fast), comparable(full));
        if fast != full {
            let at = fast.iter().zip(&full).position(|(a, b)| a != b);
            let show = |v: &[Item<'_>]| format!("{:?}", at.and_then(|i| v.get(i)));
            return Err(Disagreement::EventsDiffer {
                at,
                fast: show(&fast),
                full: show(&full),
                fast_len: fast.len(),
                full_len: full.len(),
                text: text.to_owned(),
            });
        }
        Ok(true)
    }

    fn corpus_texts() -> Vec<String> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
        let mut out = Vec::new();
        let mut dirs: Vec<_> = std::fs::read_dir(root)
            .expect("corpus")
            .map(|e| e.expect("entry").path())
            .collect();
        dirs.sort();
        for dir in dirs {
            let mut files: Vec<_> = std::fs::read_dir(&dir)
                .expect("case dir")
                .map(|e| e.expect("entry").path())
                .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
                .filter(|p| !p.ends_with("expected.yaml"))
                .collect();
            files.sort();
            // A file that is not UTF-8 never reaches a parser.
            out.extend(
                files
                    .into_iter()
                    .filter_map(|f| std::fs::read_to_string(f).ok()),
            );
        }
        out
    }

    #[test]
    fn fast_scanner_agrees_on_the_corpus() {
        let texts = corpus_texts();
        let mut accepted = 0;
        for t in &texts {
            if agrees(t).unwrap_or_else(|e| panic!("{e}")) {
                accepted += 1;
            }
        }
        // Most compose files are plain block YAML: the fast path must actually be taken.
        assert!(
            accepted * 2 > texts.len(),
            "fast scanner took only {accepted} of {} files",
            texts.len()
        );
    }

    #[test]
    fn fast_scanner_handles_the_shapes_compose_uses() {
        let text = "\
x-common: &common
  restart: unless-stopped  # trailing comment
  labels:
    team: 'bench'
services:
  # a comment line
  web:
    <<: *common
    image: \"registry.local/app:${TAG:-1.0}\"
    command: serve --port 8080 a#b
    environment:
      - HOME
      - A=b:c
    ports:
    - \"80:8080\"
    - 127.0.0.1:81:9090/udp
    volumes: []
    deploy: {resources: {limits: {cpus: \"0.5\", memory: 256M}}, labels: [a, b]}
    depends_on:
      db:
        condition: service_started
    empty:
  db:
    image: x
    networks:
      -   front
      - back: {}
volumes:
  data:
";
        assert_eq!(agrees(text), Ok(true));
        // Edge cases: either declined or read exactly like the full parser.
        for edge in [
            "a: # c\nb: 1\n",
            "a:\n  # c\n  b: 1\n",
            "a: -1\nb: ~\nc: x:y\nd: 'q' # c\n",
            "a: [a b, -1, 'x', \"y\", {k: v}]\n",
            "a: &x {k: v}\nb: [*x, *x]\nc: {<<: *x}\n",
            "a:\n- k: v\n  l: w\n- <<: *q\n",
            "x: &q {m: n}\na:\n- k: v\n  l: w\n- <<: *q\n",
            "a:\n  b:\n  - 1\n  c: 2\n",
            "a: x #c\n\n\nb: y   \n",
            "a: {}\nb: []\nc: ''\nd: \"\"\n",
            "a:\n  - x\n  -   y: 1\n      z: 2\n",
        ] {
            assert!(agrees(edge).is_ok(), "{:?}", agrees(edge));
        }
        for declined in [
            "a: |\n  x\n",
            "a: !reset x\n",
            "a: \"x\\ty\"\n",
            "a: b: c\n",
            "a:\n\tb: 1\n",
            "---\na: 1\n",
            "a: x\n  y\n",
            "a: [1,\n  2]\n",
            "- a\n",
            "a: *missing\n",
            "a: 'it''s'\n",
            "a: é\n",
        ] {
            assert_eq!(agrees(declined), Ok(false), "{declined}");
        }
    }

    /// Tokens that make YAML ambiguous or change its structure.
    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(":".to_owned()),
            Just(": ".to_owned()),
            Just("- ".to_owned()),
            Just("-".to_owned()),
            Just("\n".to_owned()),
            Just(" ".to_owned()),
            Just("  ".to_owned()),
            Just("#".to_owned()),
            Just(" #".to_owned()),
            Just("[".to_owned()),
            Just("]".to_owned()),
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just(",".to_owned()),
            Just("&a ".to_owned()),
            Just("&b".to_owned()),
            Just("*a".to_owned()),
            Just("*b".to_owned()),
            Just("<<: *a\n".to_owned()),
            Just("\"".to_owned()),
            Just("'".to_owned()),
            Just("~".to_owned()),
            Just("?".to_owned()),
            Just("|".to_owned()),
            Just(">".to_owned()),
            Just("!".to_owned()),
            Just("%".to_owned()),
            Just("@".to_owned()),
            Just("\\".to_owned()),
            Just(".".to_owned()),
            Just("/".to_owned()),
            Just("<".to_owned()),
            Just("...".to_owned()),
            Just("---".to_owned()),
            Just("k: v\n".to_owned()),
            Just("\n  - x".to_owned()),
            Just("\n    y: 1".to_owned()),
            "[a-z0-9_]{1,4}".prop_map(|s| s),
        ]
    }

    fn mutate(text: &str, muts: &[(usize, usize, String)]) -> String {
        let mut s = text.to_owned();
        for (i, del, tok) in muts {
            let at = i % (s.len() + 1);
            let end = (at + del % 3).min(s.len());
            s.replace_range(at..end, tok);
        }
        s
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn fast_scanner_agrees_on_mutated_files(
            file in any::<prop::sample::Index>(),
            muts in prop::collection::vec((any::<usize>(), any::<usize>(), token()), 1..4),
        ) {
            static TEXTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
            let texts = TEXTS.get_or_init(corpus_texts);
            let text = mutate(file.get::<String>(texts), &muts);
            if let Err(e) = agrees(&text) {
                return Err(TestCaseError::fail(e.to_string()));
            }
        }
    }
}
