//! A JSON tree that keeps every object member, so that a member given twice is visible.
//!
//! serde_json's `Value` keeps the last of two equal names silently; a key taken from such a body
//! would depend on which parser reads it, so idemgate refuses it instead. Nesting depth is
//! bounded by serde_json's recursion limit.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Tree {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Tree>),
    Object(Vec<(String, Tree)>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("{0}")]
    Syntax(String),
    #[error("member {0} is given more than once")]
    DuplicateMember(String),
}

pub fn parse(body: &[u8]) -> Result<Tree, JsonError> {
    serde_json::from_slice(body).map_err(|e| JsonError::Syntax(e.to_string()))
}

/// An RFC 6901 pointer is empty or starts with '/'; `~` must be followed by 0 or 1.
pub fn check_pointer(pointer: &str) -> Result<(), String> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(format!("{pointer:?} is not a JSON pointer (it must start with '/')"));
    }
    let bytes = pointer.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'~' && !matches!(bytes.get(i + 1), Some(b'0' | b'1')) {
            return Err(format!("{pointer:?}: '~' must be followed by 0 or 1"));
        }
    }
    Ok(())
}

impl Tree {
    /// Follows an RFC 6901 pointer. A member named twice on the way is an error.
    pub fn lookup(&self, pointer: &str) -> Result<Option<&Tree>, JsonError> {
        let mut node = self;
        if pointer.is_empty() {
            return Ok(Some(node));
        }
        for raw in pointer[1..].split('/') {
            let token = raw.replace("~1", "/").replace("~0", "~");
            node = match node {
                Tree::Object(members) => {
                    let mut found = members.iter().filter(|(k, _)| *k == token);
                    let Some((_, first)) = found.next() else {
                        return Ok(None);
                    };
                    if found.next().is_some() {
                        return Err(JsonError::DuplicateMember(pointer.to_string()));
                    }
                    first
                }
                Tree::Array(items) => match array_index(&token).and_then(|i| items.get(i)) {
                    Some(item) => item,
                    None => return Ok(None),
                },
                _ => return Ok(None),
            };
        }
        Ok(Some(node))
    }

    /// A key value: a string, or an integer written in decimal.
    pub fn as_key(&self) -> Option<String> {
        match self {
            Tree::String(s) => Some(s.clone()),
            Tree::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            _ => None,
        }
    }

    /// A canonical encoding (members sorted, no whitespace) so that the same payload written
    /// differently digests the same.
    pub fn canonical(&self, out: &mut Vec<u8>) {
        match self {
            Tree::Null => out.extend_from_slice(b"null"),
            Tree::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Tree::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Tree::String(s) => out.extend_from_slice(serde_json::to_string(s).unwrap_or_default().as_bytes()),
            Tree::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.canonical(out);
                }
                out.push(b']');
            }
            Tree::Object(members) => {
                let mut sorted: Vec<_> = members.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(&b.0));
                out.push(b'{');
                for (i, (k, v)) in sorted.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    Tree::String(k.clone()).canonical(out);
                    out.push(b':');
                    v.canonical(out);
                }
                out.push(b'}');
            }
        }
    }
}

fn array_index(token: &str) -> Option<usize> {
    let leading_zero = token.len() > 1 && token.starts_with('0');
    if leading_zero || token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok()
}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Tree, D::Error> {
        d.deserialize_any(TreeVisitor)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Tree;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Tree, E> {
        Ok(Tree::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Tree, E> {
        Ok(Tree::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Tree, E> {
        Ok(Tree::Number(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Tree, E> {
        Ok(Tree::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Tree, E> {
        serde_json::Number::from_f64(v).map(Tree::Number).ok_or_else(|| E::custom("non-finite number"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Tree, E> {
        Ok(Tree::String(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Tree, E> {
        Ok(Tree::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Tree::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
        let mut members = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Tree>()? {
            members.push((k, v));
        }
        Ok(Tree::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        assert!(matches!(parse(deep.as_bytes()), Err(JsonError::Syntax(_))));
    }

    #[test]
    fn duplicates_only_matter_on_the_pointer_path() {
        let t = parse(br#"{"id":"a","meta":{"x":1,"x":2}}"#).unwrap();
        assert_eq!(t.lookup("/id").unwrap().and_then(Tree::as_key), Some("a".into()));
        assert!(t.lookup("/meta/x").is_err());
    }

    #[test]
    fn canonical_ignores_order_and_spacing() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        parse(br#"{"b": [1, 2], "a": "x"}"#).unwrap().canonical(&mut a);
        parse(br#"{"a":"x","b":[1,2]}"#).unwrap().canonical(&mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn the_same_number_written_two_ways_is_the_same_value() {
        // Found by fuzz/key_extraction: without serde_json's exact float parsing these differ.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        parse(br#"{"a":14.797693130000141}"#).unwrap().canonical(&mut a);
        parse(br#"{"a":14.7976931300001410}"#).unwrap().canonical(&mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn pointers() {
        assert!(check_pointer("/id").is_ok());
        assert!(check_pointer("").is_ok());
        assert!(check_pointer("id").is_err());
        assert!(check_pointer("/a~2").is_err());
        assert_eq!(array_index("01"), None);
        assert_eq!(array_index("10"), Some(10));
    }
}
