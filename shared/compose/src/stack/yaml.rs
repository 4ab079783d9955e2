//! A YAML tree where every node and every mapping key keeps its position.
//!
//! Built from `saphyr-parser` events. Anchors and aliases are expanded here
//! (an alias is a copy of the anchored node, positions included, so a
//! message about a merged field points at the text that holds it) and merge
//! keys (`<<: *base`, `<<: [*a, *b]`) are applied here, so the converter sees
//! plain mappings. Limits on depth and on the size reached by expanding
//! aliases keep hostile input from exhausting the stack or memory.

use std::collections::{HashMap, HashSet};

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// Deepest nesting accepted; Compose files rarely go past eight.
const MAX_DEPTH: usize = 64;
/// Most nodes a document may hold once aliases are expanded.
const MAX_NODES: usize = 200_000;

/// A position in the source text: 1-based line and column (in characters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl Pos {
    fn from_span(span: Span) -> Pos {
        Pos {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

/// A scalar as written: its text, and whether it was a plain (unquoted,
/// untagged) scalar, which decides whether `null` or `~` mean null.
#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    pub text: String,
    pub plain: bool,
}

impl Scalar {
    /// YAML 1.2 core schema null: `~`, `null`, `Null`, `NULL` or nothing.
    pub fn is_null(&self) -> bool {
        self.plain && matches!(self.text.as_str(), "" | "~" | "null" | "Null" | "NULL")
    }
}

/// A mapping key and where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

/// One node of the tree.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

/// What a node holds. Mappings keep their order of appearance.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

impl Node {
    /// A short name of the node's kind, for messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Scalar(s) if s.is_null() => "null",
            Value::Scalar(_) => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// Whether the node is a null scalar.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar(s) if s.is_null())
    }

    /// Number of nodes in this subtree, itself included.
    fn size(&self) -> usize {
        let mut total = 0;
        let mut stack = vec![self];
        while let Some(n) = stack.pop() {
            total += 1;
            match &n.value {
                Value::Scalar(_) => {}
                Value::Seq(items) => stack.extend(items.iter()),
                Value::Map(entries) => stack.extend(entries.iter().map(|(_, v)| v)),
            }
        }
        total
    }
}

/// A YAML error: where (position and the field path reached so far) and
/// what.
#[derive(Clone, Debug, PartialEq)]
pub struct YamlError {
    pub pos: Pos,
    pub path: String,
    pub message: String,
    pub help: Option<String>,
}

impl YamlError {
    fn new(pos: Pos, message: impl Into<String>) -> YamlError {
        YamlError {
            pos,
            path: String::new(),
            message: message.into(),
            help: None,
        }
    }

    fn at(mut self, path: String) -> YamlError {
        self.path = path;
        self
    }
}

/// `path.key`, or `path["key"]` when the key is not a plain word.
pub fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_string(),
        (true, false) => format!("[{key:?}]"),
        (false, true) => format!("{path}.{key}"),
        (false, false) => format!("{path}[{key:?}]"),
    }
}

/// A container being built: its position, its anchor, and what it holds so
/// far. A mapping under construction holds a pending key between a key
/// event and its value.
enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Key, Node)>,
        /// Line of each key written so far, to find duplicates quickly.
        lines: HashMap<String, usize>,
        merges: Vec<(Pos, Node)>,
        pending: Option<PendingKey>,
    },
}

enum PendingKey {
    Key(Key),
    Merge(Pos),
}

struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
    root: Option<Node>,
}

/// Parses `text` as a single YAML document. Returns `Ok(None)` for an empty
/// stream (no document, or a document holding nothing but comments).
pub fn parse(text: &str) -> Result<Option<Node>, YamlError> {
    let mut builder = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        root: None,
    };
    let mut documents = 0usize;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| {
            YamlError::new(
                Pos {
                    line: e.marker().line(),
                    column: e.marker().col() + 1,
                },
                format!("invalid YAML: {}", e.info()),
            )
            .at(builder.path())
        })?;
        let pos = Pos::from_span(span);
        match event {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    let mut e = YamlError::new(
                        pos,
                        "a Compose file holds one YAML document, found a second",
                    );
                    e.help = Some("remove the `---` line and merge the documents".into());
                    return Err(e);
                }
            }
            Event::Alias(id) => {
                let Some((node, size)) = builder.anchors.get(&id) else {
                    return Err(
                        YamlError::new(pos, "alias to an unknown anchor").at(builder.path())
                    );
                };
                builder.nodes += size;
                if builder.nodes > MAX_NODES {
                    return Err(YamlError::new(
                        pos,
                        format!(
                            "the document expands to more than {MAX_NODES} nodes through aliases"
                        ),
                    )
                    .at(builder.path()));
                }
                let node = node.clone();
                builder.push(node, 0)?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                let mut plain = style == ScalarStyle::Plain;
                if let Some(tag) = tag {
                    if tag.is_yaml_core_schema() {
                        if tag.suffix == "str" {
                            plain = false;
                        }
                    } else {
                        return Err(YamlError::new(
                            pos,
                            format!("YAML tag `{tag}` is not supported"),
                        )
                        .at(builder.path()));
                    }
                }
                builder.nodes += 1;
                let node = Node {
                    pos,
                    value: Value::Scalar(Scalar {
                        text: text.into_owned(),
                        plain,
                    }),
                };
                builder.push(node, anchor)?;
            }
            Event::SequenceStart(_, tag) | Event::MappingStart(_, tag)
                if tag.as_ref().is_some_and(|t| !t.is_yaml_core_schema()) =>
            {
                let tag = tag.map(|t| t.to_string()).unwrap_or_default();
                return Err(
                    YamlError::new(pos, format!("YAML tag `{tag}` is not supported"))
                        .at(builder.path()),
                );
            }
            Event::SequenceStart(anchor, _) => {
                builder.open(
                    Frame::Seq {
                        pos,
                        anchor,
                        items: Vec::new(),
                    },
                    pos,
                )?;
            }
            Event::MappingStart(anchor, _) => {
                builder.open(
                    Frame::Map {
                        pos,
                        anchor,
                        entries: Vec::new(),
                        lines: HashMap::new(),
                        merges: Vec::new(),
                        pending: None,
                    },
                    pos,
                )?;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let path = builder.path();
                let Some(frame) = builder.stack.pop() else {
                    return Err(YamlError::new(pos, "unbalanced YAML collection end"));
                };
                let (node, anchor) = match frame {
                    Frame::Seq { pos, anchor, items } => (
                        Node {
                            pos,
                            value: Value::Seq(items),
                        },
                        anchor,
                    ),
                    Frame::Map {
                        pos,
                        anchor,
                        entries,
                        merges,
                        ..
                    } => (
                        Node {
                            pos,
                            value: Value::Map(
                                apply_merges(entries, merges).map_err(|e| e.at(path))?,
                            ),
                        },
                        anchor,
                    ),
                };
                builder.nodes += 1;
                builder.push(node, anchor)?;
            }
        }
    }
    Ok(builder.root)
}

impl Builder {
    /// The field path of the node being read.
    fn path(&self) -> String {
        let mut path = String::new();
        for frame in &self.stack {
            match frame {
                Frame::Seq { items, .. } => path.push_str(&format!("[{}]", items.len())),
                Frame::Map {
                    pending: Some(PendingKey::Key(k)),
                    ..
                } => path = join(&path, &k.name),
                Frame::Map {
                    pending: Some(PendingKey::Merge(_)),
                    ..
                } => path = join(&path, "<<"),
                Frame::Map { .. } => {}
            }
        }
        path
    }

    fn open(&mut self, frame: Frame, pos: Pos) -> Result<(), YamlError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(
                YamlError::new(pos, format!("nesting deeper than {MAX_DEPTH} levels"))
                    .at(self.path()),
            );
        }
        // A collection used as a mapping key is rejected when it is complete
        // (in `push`); here it is only opened.
        self.stack.push(frame);
        Ok(())
    }

    /// Places a finished node in its parent (or as the root), recording its
    /// anchor first.
    fn push(&mut self, node: Node, anchor: usize) -> Result<(), YamlError> {
        let parent_path = self.path();
        if anchor != 0 {
            let size = node.size();
            self.anchors.insert(anchor, (node.clone(), size));
        }
        let Some(top) = self.stack.last_mut() else {
            self.root = Some(node);
            return Ok(());
        };
        match top {
            Frame::Seq { items, .. } => items.push(node),
            Frame::Map {
                entries,
                lines,
                merges,
                pending,
                ..
            } => match pending.take() {
                None => {
                    let Value::Scalar(scalar) = &node.value else {
                        return Err(YamlError::new(
                            node.pos,
                            format!("a mapping key must be a string, found {}", node.kind()),
                        )
                        .at(parent_path));
                    };
                    if scalar.plain && scalar.text == "<<" {
                        *pending = Some(PendingKey::Merge(node.pos));
                    } else {
                        let key = Key {
                            name: scalar.text.clone(),
                            pos: node.pos,
                        };
                        if let Some(first) = lines.get(&key.name) {
                            let mut e = YamlError::new(
                                key.pos,
                                format!(
                                    "duplicate key `{}` (first defined at line {first})",
                                    key.name
                                ),
                            );
                            e.help = Some("remove one of the two".into());
                            return Err(e.at(join(&parent_path, &key.name)));
                        }
                        lines.insert(key.name.clone(), key.pos.line);
                        *pending = Some(PendingKey::Key(key));
                    }
                }
                Some(PendingKey::Key(key)) => entries.push((key, node)),
                Some(PendingKey::Merge(pos)) => merges.push((pos, node)),
            },
        }
        Ok(())
    }
}

/// Applies merge keys: keys written in the mapping win, then each merged
/// mapping in order (earlier ones win over later ones), as YAML's merge key
/// type specifies.
fn apply_merges(
    mut entries: Vec<(Key, Node)>,
    merges: Vec<(Pos, Node)>,
) -> Result<Vec<(Key, Node)>, YamlError> {
    if merges.is_empty() {
        return Ok(entries);
    }
    let mut present: HashSet<String> = entries.iter().map(|(k, _)| k.name.clone()).collect();
    for (pos, merge) in merges {
        let sources = match merge.value {
            Value::Map(m) => vec![m],
            Value::Seq(items) => {
                let mut maps = Vec::new();
                for item in items {
                    match item.value {
                        Value::Map(m) => maps.push(m),
                        _ => {
                            return Err(YamlError::new(
                                item.pos,
                                "a merge key (`<<`) list may only hold mappings",
                            ));
                        }
                    }
                }
                maps
            }
            Value::Scalar(_) => {
                return Err(YamlError::new(
                    pos,
                    "a merge key (`<<`) needs a mapping or a list of mappings, e.g. `<<: *defaults`",
                ));
            }
        };
        for source in sources {
            for (key, value) in source {
                if present.insert(key.name.clone()) {
                    entries.push((key, value));
                }
            }
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_keys(node: &Node) -> Vec<String> {
        match &node.value {
            Value::Map(e) => e.iter().map(|(k, _)| k.name.clone()).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn positions_are_one_based() {
        let root = parse("a:\n  b: 1\n").ok().flatten();
        let Some(Node {
            value: Value::Map(entries),
            ..
        }) = root
        else {
            panic!("expected a mapping");
        };
        assert_eq!(entries[0].0.pos, Pos { line: 1, column: 1 });
        let Value::Map(inner) = &entries[0].1.value else {
            panic!("expected a mapping");
        };
        assert_eq!(inner[0].0.pos, Pos { line: 2, column: 3 });
        assert_eq!(inner[0].1.pos, Pos { line: 2, column: 6 });
    }

    #[test]
    fn merge_keys_keep_local_values_first() {
        let text = "base: &b {x: 1, y: 2}\nother: &o {z: 3, x: 9}\nm:\n  <<: [*b, *o]\n  y: 5\n";
        let root = parse(text).ok().flatten();
        let Some(Node {
            value: Value::Map(entries),
            ..
        }) = root
        else {
            panic!("expected a mapping");
        };
        let m = &entries[2].1;
        assert_eq!(map_keys(m), vec!["y", "x", "z"]);
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = parse("a: 1\na: 2\n").err();
        assert_eq!(err.map(|e| e.pos.line), Some(2));
    }

    #[test]
    fn alias_bombs_are_stopped() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let prev = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        assert!(parse(&text).is_err());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = "[".repeat(500);
        assert!(parse(&text).is_err());
    }
}
