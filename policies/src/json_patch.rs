//! JSON Patch (RFC 6902) over `serde_json` values, with JSON Pointers (RFC 6901): the state
//! update format of Kata policies (`{"allowed": true, "ops": [...]}`). All six operations are
//! supported. [`apply`] is all-or-nothing: it works on a copy, so a failing operation leaves the
//! document as it was.

use serde_json::{Map, Value};
use thiserror::Error;

/// Why a patch could not be applied. `index` is the operation's position in the patch.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PatchError {
    /// An operation is not an object with a known `op` and the members that op needs.
    #[error("op {index} is malformed: {problem}")]
    Malformed {
        /// Position in the patch.
        index: usize,
        /// What is wrong.
        problem: String,
    },
    /// A pointer is not valid RFC 6901 syntax.
    #[error("op {index}: {pointer:?} is not a JSON pointer")]
    BadPointer {
        /// Position in the patch.
        index: usize,
        /// The pointer.
        pointer: String,
    },
    /// The location a pointer names does not exist (or its parent does not, for `add`).
    #[error("op {index}: {pointer:?} does not exist")]
    NoSuchPath {
        /// Position in the patch.
        index: usize,
        /// The pointer.
        pointer: String,
    },
    /// A `test` operation found another value.
    #[error("op {index}: test of {pointer:?} failed")]
    TestFailed {
        /// Position in the patch.
        index: usize,
        /// The pointer.
        pointer: String,
    },
    /// `move` into one of its own children.
    #[error("op {index}: cannot move {from:?} into itself")]
    MoveIntoItself {
        /// Position in the patch.
        index: usize,
        /// The source pointer.
        from: String,
    },
}

/// Applies `ops` (each a JSON Patch operation object) to a copy of `document` and returns the
/// result; `document` is untouched.
pub fn apply(document: &Value, ops: &[Value]) -> Result<Value, PatchError> {
    let mut patched = document.clone();
    for (index, op) in ops.iter().enumerate() {
        apply_one(&mut patched, op, index)?;
    }
    Ok(patched)
}

fn apply_one(document: &mut Value, op: &Value, index: usize) -> Result<(), PatchError> {
    let malformed = |problem: &str| PatchError::Malformed {
        index,
        problem: problem.to_owned(),
    };
    let Some(object) = op.as_object() else {
        return Err(malformed("not an object"));
    };
    let member = |name: &str| -> Result<&str, PatchError> {
        object
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| malformed(&format!("no string member {name:?}")))
    };
    let value = || {
        object
            .get("value")
            .cloned()
            .ok_or_else(|| malformed("no member \"value\""))
    };
    let kind = member("op")?;
    let path = member("path")?;
    let tokens = parse_pointer(path).ok_or_else(|| PatchError::BadPointer {
        index,
        pointer: path.to_owned(),
    })?;
    let missing = |pointer: &str| PatchError::NoSuchPath {
        index,
        pointer: pointer.to_owned(),
    };
    match kind {
        "add" => add(document, &tokens, value()?).ok_or_else(|| missing(path)),
        "remove" => remove(document, &tokens)
            .map(drop)
            .ok_or_else(|| missing(path)),
        "replace" => {
            let target = get_mut(document, &tokens).ok_or_else(|| missing(path))?;
            *target = value()?;
            Ok(())
        }
        "test" => {
            let found = get_mut(document, &tokens).ok_or_else(|| missing(path))?;
            if *found == value()? {
                Ok(())
            } else {
                Err(PatchError::TestFailed {
                    index,
                    pointer: path.to_owned(),
                })
            }
        }
        "copy" | "move" => {
            let from = member("from")?;
            let from_tokens = parse_pointer(from).ok_or_else(|| PatchError::BadPointer {
                index,
                pointer: from.to_owned(),
            })?;
            let moved = if kind == "move" {
                if tokens.len() > from_tokens.len() && tokens.starts_with(&from_tokens) {
                    return Err(PatchError::MoveIntoItself {
                        index,
                        from: from.to_owned(),
                    });
                }
                remove(document, &from_tokens).ok_or_else(|| missing(from))?
            } else {
                get_mut(document, &from_tokens)
                    .ok_or_else(|| missing(from))?
                    .clone()
            };
            add(document, &tokens, moved).ok_or_else(|| missing(path))
        }
        _ => Err(malformed(&format!("unknown op {kind:?}"))),
    }
}

/// `""` is the whole document; otherwise `/`-separated tokens with `~1` → `/` and `~0` → `~`.
fn parse_pointer(pointer: &str) -> Option<Vec<String>> {
    if pointer.is_empty() {
        return Some(Vec::new());
    }
    let rest = pointer.strip_prefix('/')?;
    rest.split('/')
        .map(|token| {
            let mut out = String::with_capacity(token.len());
            let mut chars = token.chars();
            while let Some(c) = chars.next() {
                match c {
                    '~' => match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => return None,
                    },
                    c => out.push(c),
                }
            }
            Some(out)
        })
        .collect()
}

/// An array index: `0` or digits without a leading zero, below `len` (or equal to it when
/// appending is allowed).
fn array_index(token: &str, len: usize, allow_end: bool) -> Option<usize> {
    if token.is_empty()
        || !token.bytes().all(|b| b.is_ascii_digit())
        || (token.len() > 1 && token.starts_with('0'))
    {
        return None;
    }
    let index: usize = token.parse().ok()?;
    (index < len || (allow_end && index == len)).then_some(index)
}

fn get_mut<'a>(document: &'a mut Value, tokens: &[String]) -> Option<&'a mut Value> {
    tokens.iter().try_fold(document, |node, token| match node {
        Value::Object(map) => map.get_mut(token),
        Value::Array(items) => {
            let index = array_index(token, items.len(), false)?;
            items.get_mut(index)
        }
        _ => None,
    })
}

fn add(document: &mut Value, tokens: &[String], value: Value) -> Option<()> {
    let Some((last, parent)) = tokens.split_last() else {
        *document = value;
        return Some(());
    };
    match get_mut(document, parent)? {
        Value::Object(map) => {
            map.insert(last.clone(), value);
        }
        Value::Array(items) => {
            let index = if last == "-" {
                items.len()
            } else {
                array_index(last, items.len(), true)?
            };
            items.insert(index, value);
        }
        _ => return None,
    }
    Some(())
}

fn remove(document: &mut Value, tokens: &[String]) -> Option<Value> {
    let Some((last, parent)) = tokens.split_last() else {
        return Some(std::mem::replace(document, Value::Object(Map::new())));
    };
    match get_mut(document, parent)? {
        Value::Object(map) => map.remove(last),
        Value::Array(items) => {
            let index = array_index(last, items.len(), false)?;
            Some(items.remove(index))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patch(document: Value, ops: Value) -> Result<Value, PatchError> {
        apply(&document, ops.as_array().unwrap())
    }

    #[test]
    fn add_replace_remove_on_objects_and_arrays() {
        let doc = json!({"a": {"b": [1, 2]}});
        let ops = json!([
            {"op": "add", "path": "/sandbox_name", "value": "pod-a"},
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "add", "path": "/a/b/0", "value": 0},
            {"op": "replace", "path": "/a/b/1", "value": 10},
            {"op": "remove", "path": "/a/b/2"},
            {"op": "add", "path": "/a/x~1y~0z", "value": true}
        ]);
        assert_eq!(
            patch(doc, ops).unwrap(),
            json!({"sandbox_name": "pod-a", "a": {"b": [0, 10, 3], "x/y~z": true}})
        );
    }

    #[test]
    fn add_to_an_existing_member_replaces_it() {
        let ops = json!([{"op": "add", "path": "/k", "value": 2}]);
        assert_eq!(patch(json!({"k": 1}), ops).unwrap(), json!({"k": 2}));
    }

    #[test]
    fn test_copy_move() {
        let doc = json!({"a": 1, "list": []});
        let ops = json!([
            {"op": "test", "path": "/a", "value": 1},
            {"op": "copy", "from": "/a", "path": "/b"},
            {"op": "move", "from": "/a", "path": "/list/0"}
        ]);
        assert_eq!(patch(doc, ops).unwrap(), json!({"b": 1, "list": [1]}));
    }

    #[test]
    fn root_pointer_names_the_whole_document() {
        let ops = json!([{"op": "replace", "path": "", "value": {"x": 1}}]);
        assert_eq!(patch(json!({"y": 2}), ops).unwrap(), json!({"x": 1}));
    }

    /// Each failing op is an error, and nothing of the patch is applied (the caller keeps its
    /// document).
    #[test]
    fn failures_table() {
        let doc = json!({"a": {"b": [1]}, "s": "x"});
        let cases = [
            (
                json!([{"op": "add", "path": "/no/such", "value": 1}]),
                "does not exist",
            ),
            (json!([{"op": "remove", "path": "/zz"}]), "does not exist"),
            (
                json!([{"op": "replace", "path": "/zz", "value": 1}]),
                "does not exist",
            ),
            (
                json!([{"op": "add", "path": "/a/b/2", "value": 1}]),
                "does not exist",
            ),
            (
                json!([{"op": "add", "path": "/a/b/01", "value": 1}]),
                "does not exist",
            ),
            (
                json!([{"op": "add", "path": "/s/x", "value": 1}]),
                "does not exist",
            ),
            (
                json!([{"op": "remove", "path": "/a/b/-"}]),
                "does not exist",
            ),
            (
                json!([{"op": "add", "path": "a", "value": 1}]),
                "is not a JSON pointer",
            ),
            (
                json!([{"op": "add", "path": "/a~2", "value": 1}]),
                "is not a JSON pointer",
            ),
            (json!([{"op": "add", "path": "/k"}]), "no member \"value\""),
            (json!([{"op": "frobnicate", "path": "/k"}]), "unknown op"),
            (json!([{"path": "/k"}]), "no string member \"op\""),
            (json!(["add"]), "not an object"),
            (
                json!([{"op": "test", "path": "/s", "value": "y"}]),
                "test of \"/s\" failed",
            ),
            (
                json!([{"op": "move", "from": "/a", "path": "/a/c"}]),
                "into itself",
            ),
            (
                json!([{"op": "add", "path": "/ok", "value": 1}, {"op": "remove", "path": "/zz"}]),
                "op 1: \"/zz\" does not exist",
            ),
        ];
        for (ops, expected) in cases {
            let err = patch(doc.clone(), ops.clone()).unwrap_err().to_string();
            assert!(err.contains(expected), "{ops}: {err}");
        }
    }
}
