//! Reading a TOML file so that every problem in it is found in one run.
//!
//! `toml::from_str` stops at the first unknown key or wrong type, so a file
//! with ten mistakes would take many rounds of `check-config`. Here the
//! text is parsed once into a tree that keeps the span of every key and
//! value, and the typed structs are read from that tree by a deserializer
//! of our own, which
//!
//! - reports every key a struct does not declare, at every table, and skips it;
//! - on a wrong type, notes the problem, marks the value as a *stand-in*
//!   and reads the file again: a stand-in reads as absent (`Option`) or as
//!   an empty value of the wanted type, so the values after it are still
//!   checked;
//! - on a missing required key, notes it and supplies a stand-in.
//!
//! The positions of stand-ins are returned so that validation does not
//! report a second, follow-on problem (an empty stand-in host name) where
//! one was already reported.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt::Display;
use std::ops::Range;
use std::path::Path;

use serde::de::value::{BorrowedStrDeserializer, StrDeserializer};
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, Expected, IntoDeserializer, MapAccess,
    SeqAccess, Unexpected, Visitor,
};

use super::{ConfigProblem, line_col};

// The names serde_spanned (toml's `Spanned`) uses to ask a deserializer for
// a span; a unit test below fails if they ever change.
const SPANNED: &str = "$__serde_spanned_private_Spanned";
const START: &str = "$__serde_spanned_private_start";
const END: &str = "$__serde_spanned_private_end";
const VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: &[&str] = &[START, END, VALUE];
/// How toml hands a date-time to serde.
const DATETIME: &str = "$__toml_private_datetime";

/// Rereads after this many type errors are not worth it: fix these first.
const MAX_PASSES: usize = 200;

/// One TOML value and where it is in the text.
#[derive(Debug)]
struct Node {
    span: Range<usize>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime,
    Array(Vec<Node>),
    Table(Vec<Entry>),
}

#[derive(Debug)]
struct Entry {
    key: String,
    key_span: Range<usize>,
    value: Node,
}

impl Node {
    fn new(kind: Kind) -> Node {
        Node { span: 0..0, kind }
    }
}

/// What [`from_str`] found.
pub(crate) struct Parsed<T> {
    /// The typed value, unless the text is not TOML at all.
    pub(crate) value: Option<T>,
    /// Syntax, unknown-key, type and missing-key problems, in file order.
    pub(crate) problems: Vec<ConfigProblem>,
    /// Line and column of every stand-in value.
    pub(crate) stand_ins: Vec<(usize, usize)>,
    /// Dotted key and line/column of every value in the file, in order
    /// (array entries one by one), to place problems found later.
    pub(crate) origins: Vec<(String, usize, usize)>,
}

impl<T> Parsed<T> {
    /// Whether `p` sits on a stand-in, so is a follow-on of a problem
    /// already reported there.
    pub(crate) fn is_follow_on(&self, p: &ConfigProblem) -> bool {
        match (p.line, p.column) {
            (Some(l), Some(c)) => self.stand_ins.contains(&(l, c)),
            _ => false,
        }
    }
}

/// The message for a TOML syntax error. The toml parser gives some (a
/// control character in a comment) with no text at all: say what is at
/// the spot instead of printing an empty line.
fn syntax_message(text: &str, at: Option<usize>, message: &str) -> String {
    let message = message.trim();
    if !message.is_empty() {
        return message.to_string();
    }
    match at
        .and_then(|o| text.get(o..))
        .and_then(|t| t.chars().next())
    {
        Some(c) if c.is_control() => format!(
            "invalid TOML: control character U+{:04X} (TOML allows only tab as a control character, even in comments)",
            u32::from(c)
        ),
        Some(c) => format!("invalid TOML at {c:?}"),
        None => "invalid TOML: the file ends in the middle of something".to_string(),
    }
}

/// Reads `text` (from `file`) as a `T`, collecting every problem.
pub(crate) fn from_str<T: DeserializeOwned>(file: &Path, text: &str) -> Parsed<T> {
    let problem = |at: Option<usize>, key: Option<String>, message: String| {
        let (line, column) = at.map(|o| line_col(text, o)).unzip();
        ConfigProblem {
            file: file.to_path_buf(),
            line,
            column,
            key: key.filter(|k| !k.is_empty()),
            message,
        }
    };
    let root = match parse(text) {
        Ok(root) => root,
        Err(e) => {
            let at = e.span().map(|s| s.start);
            return Parsed {
                value: None,
                problems: vec![problem(at, None, syntax_message(text, at, e.message()))],
                stand_ins: Vec::new(),
                origins: Vec::new(),
            };
        }
    };
    let ctx = Ctx::default();
    let mut problems = Vec::new();
    let mut stand_ins = Vec::new();
    let mut value = None;
    for pass in 0.. {
        if pass == MAX_PASSES {
            problems.push(problem(
                None,
                None,
                "too many problems; fix these and run the check again".into(),
            ));
            break;
        }
        let at = match T::deserialize(De::root(&root, &ctx)) {
            Ok(v) => {
                value = Some(v);
                break;
            }
            Err(DeError {
                at: None, message, ..
            }) => {
                problems.push(problem(None, None, message));
                break;
            }
            Err(DeError {
                at: Some(at),
                message,
                missing,
            }) => {
                let fresh = match missing {
                    Some(field) => {
                        let key = join(&at.path, field);
                        problems.push(problem(Some(at.span.start), Some(key), message));
                        ctx.missing.borrow_mut().insert((at.node, field))
                    }
                    None => {
                        let key = at.path.clone();
                        problems.push(problem(Some(at.span.start), Some(key), message));
                        ctx.stand_in.borrow_mut().insert(at.node)
                    }
                };
                if !fresh {
                    // A stand-in failed too: nothing more can be learnt.
                    break;
                }
                at
            }
        };
        stand_ins.push(line_col(text, at.span.start));
    }
    for u in ctx.unknown.into_inner() {
        problems.push(problem(Some(u.at), Some(u.path), u.message));
    }
    problems.sort_by_key(|p| (p.line, p.column));
    let mut origins = Vec::new();
    collect_origins(&root, "", text, &mut origins);
    Parsed {
        value,
        problems,
        stand_ins,
        origins,
    }
}

fn collect_origins(node: &Node, path: &str, text: &str, out: &mut Vec<(String, usize, usize)>) {
    match &node.kind {
        Kind::Table(entries) => {
            if !path.is_empty() {
                let (l, c) = line_col(text, node.span.start);
                out.push((path.to_string(), l, c));
            }
            for e in entries {
                collect_origins(&e.value, &join(path, &e.key), text, out);
            }
        }
        Kind::Array(items) => {
            for item in items {
                collect_origins(item, path, text, out);
            }
        }
        _ => {
            let (l, c) = line_col(text, node.span.start);
            out.push((path.to_string(), l, c));
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

// ---- Parsing the text into a tree with spans ----

fn parse(text: &str) -> Result<Node, toml::de::Error> {
    PlainSeed.deserialize(toml::Deserializer::new(text))
}

/// Reads a value, asking the toml deserializer for its span first.
struct SpannedSeed;

impl<'de> DeserializeSeed<'de> for SpannedSeed {
    type Value = Node;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_struct(SPANNED, SPANNED_FIELDS, NodeVisitor)
    }
}

/// Reads the inside of a span wrapper (asking again would loop).
struct PlainSeed;

impl<'de> DeserializeSeed<'de> for PlainSeed {
    type Value = Node;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::new(Kind::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::new(Kind::Int(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        i64::try_from(v)
            .map(|v| Node::new(Kind::Int(v)))
            .map_err(|_| E::custom("integer too large"))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::new(Kind::Float(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::new(Kind::Str(v.to_string())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(n) = seq.next_element_seed(SpannedSeed)? {
            items.push(n);
        }
        Ok(Node::new(Kind::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let Some(first) = map.next_key_seed(KeySeed)? else {
            return Ok(Node::new(Kind::Table(Vec::new())));
        };
        if first.span.is_none() && first.name == START {
            return read_span_wrapper(map);
        }
        if first.span.is_none() && first.name == DATETIME {
            let _: String = map.next_value()?;
            return Ok(Node::new(Kind::Datetime));
        }
        let mut entries = Vec::new();
        let mut key = Some(first);
        while let Some(k) = key {
            let value = map.next_value_seed(SpannedSeed)?;
            entries.push(Entry {
                key_span: k.span.unwrap_or_else(|| value.span.clone()),
                key: k.name,
                value,
            });
            key = map.next_key_seed(KeySeed)?;
        }
        Ok(Node::new(Kind::Table(entries)))
    }
}

/// The rest of `{start, end, value}` after the `start` key.
fn read_span_wrapper<'de, A: MapAccess<'de>>(mut map: A) -> Result<Node, A::Error> {
    use de::Error;
    let start: usize = map.next_value()?;
    let expect = |k: Option<Key>, name: &str| match k {
        Some(k) if k.name == name => Ok(()),
        _ => Err(A::Error::custom("malformed span")),
    };
    expect(map.next_key_seed(KeySeed)?, END)?;
    let end: usize = map.next_value()?;
    expect(map.next_key_seed(KeySeed)?, VALUE)?;
    let mut node = map.next_value_seed(PlainSeed)?;
    node.span = start..end;
    Ok(node)
}

/// A table key, with its span when toml gives one.
struct Key {
    name: String,
    span: Option<Range<usize>>,
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_struct(SPANNED, SPANNED_FIELDS, KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(Key {
            name: v.to_string(),
            span: None,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
        let (mut start, mut end, mut name) = (None, None, None);
        while let Some(k) = map.next_key::<String>()? {
            match k.as_str() {
                START => start = Some(map.next_value::<usize>()?),
                END => end = Some(map.next_value::<usize>()?),
                _ => name = Some(map.next_value::<String>()?),
            }
        }
        match (start, end, name) {
            (Some(s), Some(e), Some(name)) => Ok(Key {
                name,
                span: Some(s..e),
            }),
            _ => Err(de::Error::custom("malformed key span")),
        }
    }
}

// ---- Reading typed structs from the tree ----

/// What the passes learn, shared by every deserializer of one read.
#[derive(Default)]
struct Ctx {
    /// Values (by address) that had a problem and now read as stand-ins.
    stand_in: RefCell<HashSet<usize>>,
    /// Required keys missing from a table (by address): a stand-in is
    /// supplied.
    missing: RefCell<HashSet<(usize, &'static str)>>,
    /// Unknown keys seen so far (by entry address), and their problems.
    unknown_seen: RefCell<HashSet<usize>>,
    unknown: RefCell<Vec<Unknown>>,
}

struct Unknown {
    at: usize,
    path: String,
    message: String,
}

fn id<T>(x: &T) -> usize {
    x as *const T as usize
}

impl Ctx {
    fn note_unknown(&self, table_path: &str, e: &Entry, known: &'static [&'static str]) {
        if !self.unknown_seen.borrow_mut().insert(id(e)) {
            return;
        }
        let what = match e.value.kind {
            Kind::Table(_) => "table",
            _ => "key",
        };
        let mut message = format!("unknown {what} `{}`", e.key);
        if let Some(near) = known.iter().find(|k| edit_distance(k, &e.key) <= 2) {
            message.push_str(&format!(" (did you mean `{near}`?)"));
        }
        let here = if table_path.is_empty() {
            "at the top level".to_string()
        } else {
            format!("in [{table_path}]")
        };
        message.push_str(&format!("; known {here}: {}", known.join(", ")));
        self.unknown.borrow_mut().push(Unknown {
            at: e.key_span.start,
            path: join(table_path, &e.key),
            message,
        });
    }
}

/// Levenshtein distance, for "did you mean" on short key names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Where a problem is: the value (by address), its span and dotted key.
#[derive(Debug, Clone)]
struct At {
    node: usize,
    span: Range<usize>,
    path: String,
}

/// A problem found while reading; located at the innermost value.
#[derive(Debug)]
struct DeError {
    message: String,
    /// The required key that is missing (located at its table).
    missing: Option<&'static str>,
    at: Option<At>,
}

impl Display for DeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: Display>(msg: T) -> Self {
        DeError {
            message: msg.to_string(),
            missing: None,
            at: None,
        }
    }

    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        Self::custom(format!(
            "expected {}, found {}",
            expected_name(exp),
            found_name(&unexp)
        ))
    }

    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        Self::custom(format!(
            "{} is not {}",
            found_name(&unexp),
            expected_name(exp)
        ))
    }

    fn missing_field(field: &'static str) -> Self {
        DeError {
            message: "is required but missing".into(),
            missing: Some(field),
            at: None,
        }
    }
}

impl DeError {
    fn at(mut self, at: &At) -> Self {
        if self.at.is_none() {
            self.at = Some(at.clone());
        }
        self
    }
}

/// serde's names for what a field wants, in TOML words.
fn expected_name(exp: &dyn Expected) -> String {
    let e = exp.to_string();
    match e.as_str() {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" | "isize" => {
            "an integer".into()
        }
        "f32" | "f64" => "a number".into(),
        "a sequence" => "an array".into(),
        "a map" => "a table".into(),
        s if s.starts_with("struct ") => "a table".into(),
        _ => e,
    }
}

fn found_name(unexp: &Unexpected<'_>) -> String {
    match unexp {
        Unexpected::Str(s) => format!("the string \"{s}\""),
        Unexpected::Signed(n) => format!("the integer {n}"),
        Unexpected::Unsigned(n) => format!("the integer {n}"),
        Unexpected::Float(n) => format!("the number {n}"),
        Unexpected::Bool(b) => format!("`{b}`"),
        Unexpected::Seq => "an array".into(),
        Unexpected::Map => "a table".into(),
        other => other.to_string(),
    }
}

/// Reads one value of the tree (or a stand-in for it).
#[derive(Clone)]
struct De<'a> {
    node: &'a Node,
    /// Read as a stand-in: absent if optional, else empty.
    stand_in: bool,
    path: String,
    ctx: &'a Ctx,
}

impl<'a> De<'a> {
    fn root(node: &'a Node, ctx: &'a Ctx) -> De<'a> {
        De {
            node,
            stand_in: false,
            path: String::new(),
            ctx,
        }
    }

    fn child(&self, node: &'a Node, key: Option<&str>) -> De<'a> {
        De {
            node,
            stand_in: self.stand_in || self.ctx.stand_in.borrow().contains(&id(node)),
            path: key.map_or_else(|| self.path.clone(), |k| join(&self.path, k)),
            ctx: self.ctx,
        }
    }

    /// A stand-in for the missing key `field` of this table.
    fn missing(&self, field: &'static str) -> De<'a> {
        De {
            node: self.node,
            stand_in: true,
            path: join(&self.path, field),
            ctx: self.ctx,
        }
    }

    fn at(&self) -> At {
        At {
            node: id(self.node),
            span: self.node.span.clone(),
            path: self.path.clone(),
        }
    }

    /// Type-directed by the value itself, as toml does.
    fn any<'de, V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let at = self.at();
        let node: &'a Node = self.node;
        let r = match &node.kind {
            Kind::Str(s) => v.visit_str(s),
            Kind::Int(i) => v.visit_i64(*i),
            Kind::Float(f) => v.visit_f64(*f),
            Kind::Bool(b) => v.visit_bool(*b),
            Kind::Datetime => Err(de::Error::invalid_type(
                Unexpected::Other("a date-time"),
                &v,
            )),
            Kind::Array(items) => v.visit_seq(Items {
                de: &self,
                items: items.iter(),
            }),
            Kind::Table(entries) => v.visit_map(Fields::new(&self, entries, None)),
        };
        r.map_err(|e| e.at(&at))
    }
}

macro_rules! stand_in_or_any {
    ($($method:ident => |$v:ident| $empty:expr;)*) => {
        $(fn $method<V: Visitor<'de>>(self, $v: V) -> Result<V::Value, DeError> {
            if self.stand_in {
                let at = self.at();
                $empty.map_err(|e: DeError| e.at(&at))
            } else {
                self.any($v)
            }
        })*
    };
}

impl<'de, 'a> Deserializer<'de> for De<'a> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if self.stand_in {
            return v.visit_unit();
        }
        self.any(v)
    }

    stand_in_or_any! {
        deserialize_bool => |v| v.visit_bool(false);
        deserialize_i8 => |v| v.visit_i64(0);
        deserialize_i16 => |v| v.visit_i64(0);
        deserialize_i32 => |v| v.visit_i64(0);
        deserialize_i64 => |v| v.visit_i64(0);
        deserialize_u8 => |v| v.visit_u64(0);
        deserialize_u16 => |v| v.visit_u64(0);
        deserialize_u32 => |v| v.visit_u64(0);
        deserialize_u64 => |v| v.visit_u64(0);
        deserialize_f32 => |v| v.visit_f64(0.0);
        deserialize_f64 => |v| v.visit_f64(0.0);
        deserialize_char => |v| v.visit_char('\0');
        deserialize_str => |v| v.visit_str("");
        deserialize_string => |v| v.visit_str("");
        deserialize_identifier => |v| v.visit_str("");
        deserialize_bytes => |v| v.visit_bytes(&[]);
        deserialize_byte_buf => |v| v.visit_bytes(&[]);
        deserialize_unit => |v| v.visit_unit();
        deserialize_ignored_any => |v| v.visit_unit();
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if !self.stand_in {
            return self.any(v);
        }
        let at = self.at();
        v.visit_seq(Items {
            de: &self,
            items: Default::default(),
        })
        .map_err(|e| e.at(&at))
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if !self.stand_in {
            return self.any(v);
        }
        let at = self.at();
        v.visit_map(Fields::stand_in(&self, &[]))
            .map_err(|e| e.at(&at))
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if self.stand_in {
            return v.visit_none();
        }
        let at = self.at();
        v.visit_some(self).map_err(|e| e.at(&at))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        let at = self.at();
        let node: &'a Node = self.node;
        let r = if name == SPANNED {
            v.visit_map(SpanFields {
                start: Some(self.node.span.start),
                end: Some(self.node.span.end),
                value: Some(self.clone()),
            })
        } else if self.stand_in {
            v.visit_map(Fields::stand_in(&self, fields))
        } else if let Kind::Table(entries) = &node.kind {
            v.visit_map(Fields::new(&self, entries, Some(fields)))
        } else {
            return self.any(v);
        };
        r.map_err(|e| e.at(&at))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        let at = self.at();
        let node: &'a Node = self.node;
        let r = match &node.kind {
            Kind::Str(s) if !self.stand_in => {
                v.visit_enum(IntoDeserializer::<DeError>::into_deserializer(s.as_str()))
            }
            _ => Err(de::Error::custom("expected one of the listed words")),
        };
        r.map_err(|e| e.at(&at))
    }
}

/// The elements of an array.
struct Items<'a, 'b> {
    de: &'b De<'a>,
    items: std::slice::Iter<'a, Node>,
}

impl<'de> SeqAccess<'de> for Items<'_, '_> {
    type Error = DeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            Some(n) => seed.deserialize(self.de.child(n, None)).map(Some),
            None => Ok(None),
        }
    }
}

/// The keys of a table; for a struct only the keys it declares (the others
/// are noted as unknown), plus stand-ins for missing required keys.
struct Fields<'a, 'b> {
    de: &'b De<'a>,
    entries: std::slice::Iter<'a, Entry>,
    /// Keys a struct declares; `None` for a map, which takes any key.
    known: Option<&'static [&'static str]>,
    stand_ins: std::vec::IntoIter<&'static str>,
    next: Option<De<'a>>,
}

impl<'a, 'b> Fields<'a, 'b> {
    fn new(
        de: &'b De<'a>,
        entries: &'a [Entry],
        known: Option<&'static [&'static str]>,
    ) -> Fields<'a, 'b> {
        let missing = de.ctx.missing.borrow();
        let stand_ins: Vec<&'static str> = known
            .unwrap_or(&[])
            .iter()
            .copied()
            .filter(|f| missing.contains(&(id(de.node), *f)))
            .filter(|f| !entries.iter().any(|e| e.key == *f))
            .collect();
        Fields {
            de,
            entries: entries.iter(),
            known,
            stand_ins: stand_ins.into_iter(),
            next: None,
        }
    }

    /// Every declared key as a stand-in (a table that is itself one).
    fn stand_in(de: &'b De<'a>, fields: &'static [&'static str]) -> Fields<'a, 'b> {
        Fields {
            de,
            entries: Default::default(),
            known: Some(fields),
            stand_ins: fields.to_vec().into_iter(),
            next: None,
        }
    }
}

impl<'de> MapAccess<'de> for Fields<'_, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        for e in self.entries.by_ref() {
            if let Some(known) = self.known
                && !known.contains(&e.key.as_str())
            {
                self.de.ctx.note_unknown(&self.de.path, e, known);
                continue;
            }
            self.next = Some(self.de.child(&e.value, Some(&e.key)));
            return seed
                .deserialize(StrDeserializer::<DeError>::new(&e.key))
                .map(Some);
        }
        match self.stand_ins.next() {
            Some(field) => {
                self.next = Some(self.de.missing(field));
                seed.deserialize(BorrowedStrDeserializer::<DeError>::new(field))
                    .map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.next.take() {
            Some(de) => seed.deserialize(de),
            None => Err(de::Error::custom("a value was asked for before its key")),
        }
    }
}

/// `Spanned<T>`: the span, then the value itself.
struct SpanFields<'a> {
    start: Option<usize>,
    end: Option<usize>,
    value: Option<De<'a>>,
}

impl<'de> MapAccess<'de> for SpanFields<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let key = if self.start.is_some() {
            START
        } else if self.end.is_some() {
            END
        } else if self.value.is_some() {
            VALUE
        } else {
            return Ok(None);
        };
        seed.deserialize(BorrowedStrDeserializer::<DeError>::new(key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        if let Some(s) = self.start.take() {
            seed.deserialize(IntoDeserializer::<DeError>::into_deserializer(s))
        } else if let Some(e) = self.end.take() {
            seed.deserialize(IntoDeserializer::<DeError>::into_deserializer(e))
        } else if let Some(v) = self.value.take() {
            seed.deserialize(v)
        } else {
            Err(de::Error::custom("a value was asked for before its key"))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use toml::Spanned;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Top {
        a: Inner,
        #[serde(default)]
        list: Vec<Spanned<String>>,
        n: Option<Spanned<i64>>,
        #[serde(default)]
        flag: bool,
        #[serde(default)]
        items: Vec<Item>,
        #[serde(default)]
        map: BTreeMap<String, Spanned<String>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        name: Spanned<String>,
        port: Option<i64>,
        deep: Option<Deep>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Deep {
        x: i64,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        id: String,
    }

    fn read(text: &str) -> Parsed<Top> {
        from_str(Path::new("t.toml"), text)
    }

    fn summary(p: &Parsed<Top>) -> Vec<(Option<usize>, String, String)> {
        p.problems
            .iter()
            .map(|p| (p.line, p.key.clone().unwrap_or_default(), p.message.clone()))
            .collect()
    }

    #[test]
    fn a_clean_file_reads_like_toml_does() {
        let text = "list = [\"x\", \"y\"]\nn = 5\nflag = true\n[a]\nname = \"gw\"\nport = 25\n[a.deep]\nx = 1\n[[items]]\nid = \"i\"\n[map]\nk = \"v\"\n";
        let p = read(text);
        assert!(p.problems.is_empty(), "{:?}", summary(&p));
        let top = p.value.unwrap();
        let via_toml: Top = toml::from_str(text).unwrap();
        assert_eq!(top.a.name.span(), via_toml.a.name.span());
        assert_eq!(top.a.name.get_ref(), "gw");
        assert_eq!(top.list[1].span(), via_toml.list[1].span());
        assert_eq!(top.n.as_ref().map(|n| *n.get_ref()), Some(5));
        assert_eq!(top.n.unwrap().span(), via_toml.n.unwrap().span());
        assert_eq!(top.a.port, Some(25));
        assert_eq!(top.a.deep.unwrap().x, 1);
        assert_eq!(top.items[0].id, "i");
        assert_eq!(top.map["k"].get_ref(), "v");
        assert!(top.flag);
        let keys: Vec<&str> = p.origins.iter().map(|o| o.0.as_str()).collect();
        assert_eq!(
            keys,
            [
                "list", "list", "n", "flag", "a", "a.name", "a.port", "a.deep", "a.deep.x",
                "items", "items.id", "map", "map.k"
            ]
        );
    }

    #[test]
    fn every_unknown_key_and_wrong_type_at_once() {
        let text = "\
bogus = 1
n = \"five\"
flag = \"yes\"
list = [\"ok\", 7]
[a]
name = 5
port = \"x\"
nmae = \"typo\"
[a.deep]
x = \"one\"
y = 2
[[items]]
id = 1
extra = true
[[items]]
[extra_table]
k = 1
";
        let p = read(text);
        let got = summary(&p);
        let want = [
            (1, "bogus", "unknown key `bogus`"),
            (2, "n", "expected an integer, found the string \"five\""),
            (3, "flag", "expected a boolean, found the string \"yes\""),
            (4, "list", "expected a string, found the integer 7"),
            (6, "a.name", "expected a string, found the integer 5"),
            (7, "a.port", "expected an integer"),
            (8, "a.nmae", "unknown key `nmae` (did you mean `name`?)"),
            (10, "a.deep.x", "expected an integer"),
            (11, "a.deep.y", "unknown key `y`"),
            (13, "items.id", "expected a string"),
            (14, "items.extra", "unknown key `extra`"),
            (15, "items.id", "is required but missing"),
            (16, "extra_table", "unknown table `extra_table`"),
        ];
        for (line, key, msg) in want {
            assert!(
                got.iter()
                    .any(|(l, k, m)| *l == Some(line) && k == key && m.starts_with(msg)),
                "missing {line} {key} {msg}: {got:#?}"
            );
        }
        assert_eq!(got.len(), want.len(), "{got:#?}");
        // Reading went on to the end: a value with stand-ins.
        let top = p.value.unwrap();
        assert_eq!(top.a.name.get_ref(), "");
        assert_eq!(top.n, None);
        // Problems come in file order.
        let lines: Vec<_> = got.iter().map(|g| g.0).collect();
        let mut sorted = lines.clone();
        sorted.sort();
        assert_eq!(lines, sorted);
    }

    #[test]
    fn a_missing_required_table_is_named_and_stood_in_for() {
        let p = read("flag = true\n");
        let got = summary(&p);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].1, "a");
        assert!(got[0].2.contains("required"));
        assert_eq!(p.value.unwrap().a.name.get_ref(), "");
        // A follow-on problem at the stand-in is recognised as one.
        let follow = ConfigProblem {
            file: "t.toml".into(),
            line: Some(1),
            column: Some(1),
            key: Some("a.name".into()),
            message: "empty".into(),
        };
        let p = read("flag = true\n");
        assert!(p.is_follow_on(&follow));
    }

    #[test]
    fn a_wrong_type_for_a_table_reads_as_absent() {
        let p = read("[a]\nname = \"x\"\ndeep = 3\n");
        let got = summary(&p);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].1, "a.deep");
        assert!(got[0].2.contains("expected a table"), "{got:?}");
        assert!(p.value.unwrap().a.deep.is_none());
    }

    #[test]
    fn a_syntax_error_is_one_problem_with_its_line() {
        let p = read("[a]\nname = \"x\"\nport = = 3\n");
        assert!(p.value.is_none());
        assert_eq!(p.problems.len(), 1);
        assert_eq!(p.problems[0].line, Some(3));
    }

    #[test]
    fn a_date_time_is_a_type_error_not_a_crash() {
        let p = read("[a]\nname = 1979-05-27T07:32:00Z\n");
        let got = summary(&p);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].2.contains("date-time"), "{got:?}");
    }

    #[test]
    fn inline_and_dotted_tables_are_checked_too() {
        let p = read("a = { name = \"x\", bogus = 1 }\nmap.k = 2\n");
        let got = summary(&p);
        assert!(
            got.iter()
                .any(|g| g.0 == Some(1) && g.1 == "a.bogus" && g.2.starts_with("unknown key")),
            "{got:?}"
        );
        assert!(
            got.iter().any(|g| g.0 == Some(2) && g.1 == "map.k"),
            "{got:?}"
        );
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("name", "nmae"), 2);
        assert_eq!(edit_distance("listen", "listen"), 0);
        assert_eq!(edit_distance("port", ""), 4);
    }
}

#[cfg(test)]
mod syntax_tests {
    use super::*;

    /// From the `policy_file` fuzz target: a control character in a
    /// comment is a TOML error that toml reports with no message.
    #[test]
    fn every_syntax_error_has_a_message() {
        for text in [
            "# a \u{1c} comment\nx = 1\n",
            "x = \"a\u{7}b\"\n",
            "x = [1,\n",
            "x = \n",
            "[a\n",
        ] {
            let parsed: Parsed<toml::Table> = from_str(Path::new("p.toml"), text);
            assert_eq!(parsed.problems.len(), 1, "{text:?}");
            let p = &parsed.problems[0];
            assert!(!p.message.trim().is_empty(), "{text:?}: {p:?}");
            assert!(p.line.is_some(), "{text:?}: {p:?}");
        }
        let parsed: Parsed<toml::Table> = from_str(Path::new("p.toml"), "# \u{1c}\n");
        assert!(
            parsed.problems[0].message.contains("U+001C"),
            "{:?}",
            parsed.problems
        );
    }
}
