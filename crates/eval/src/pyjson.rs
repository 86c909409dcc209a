//! JSON text byte-identical to Python's `json.dumps(obj)` with default arguments
//! (`", "` / `": "` separators, `ensure_ascii=True`), so answer files match the ones the
//! reference's scripts write. Objects are written in the order given (build them with
//! [`PyValue::Object`]), not sorted.

/// A JSON value with ordered object keys.
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<PyValue>),
    Object(Vec<(String, PyValue)>),
}

impl PyValue {
    pub fn obj(pairs: Vec<(&str, PyValue)>) -> Self {
        PyValue::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }
    pub fn str(s: impl Into<String>) -> Self {
        PyValue::Str(s.into())
    }
}

impl From<&serde_json::Value> for PyValue {
    /// serde_json objects come out with sorted keys (no `preserve_order`).
    fn from(v: &serde_json::Value) -> Self {
        use serde_json::Value as V;
        match v {
            V::Null => PyValue::Null,
            V::Bool(b) => PyValue::Bool(*b),
            V::Number(n) => match n.as_i64() {
                Some(i) => PyValue::Int(i),
                None => PyValue::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            V::String(s) => PyValue::Str(s.clone()),
            V::Array(a) => PyValue::List(a.iter().map(PyValue::from).collect()),
            V::Object(o) => PyValue::Object(
                o.iter()
                    .map(|(k, v)| (k.clone(), PyValue::from(v)))
                    .collect(),
            ),
        }
    }
}

/// `json.dumps(value)`.
pub fn dumps(v: &PyValue) -> String {
    let mut s = String::new();
    write(&mut s, v);
    s
}

fn write(out: &mut String, v: &PyValue) {
    match v {
        PyValue::Null => out.push_str("null"),
        PyValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        PyValue::Int(i) => out.push_str(&i.to_string()),
        PyValue::Float(f) => out.push_str(&float_repr(*f)),
        PyValue::Str(s) => write_str(out, s),
        PyValue::List(items) => {
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write(out, it);
            }
            out.push(']');
        }
        PyValue::Object(pairs) => {
            out.push('{');
            for (i, (k, val)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str(out, k);
                out.push_str(": ");
                write(out, val);
            }
            out.push('}');
        }
    }
}

/// Python's float repr: shortest round-trip digits, `.0` on integral values, `NaN` /
/// `Infinity` as json.dumps writes them.
fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let s = format!("{f:?}");
    // Rust's Debug is shortest round-trip too; Python switches to exponent form at 1e16.
    if f.abs() >= 1e16 || (f != 0.0 && f.abs() < 1e-4) {
        let e = format!("{f:e}");
        let (m, exp) = e.split_once('e').unwrap_or((&e, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let m = if m.contains('.') {
            m.to_string()
        } else {
            format!("{m}.0")
        };
        let m = m.trim_end_matches(".0").to_string();
        return format!("{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    s
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_python_json_dumps() {
        // Expected strings are what CPython 3.11's json.dumps prints for the same objects.
        let v = PyValue::obj(vec![
            ("vid", PyValue::str("a/b.mp4")),
            ("pred", PyValue::Int(2)),
            ("gt", PyValue::Int(-1)),
            ("s", PyValue::str("é\"\n\u{1F600}\u{7f}")),
            (
                "l",
                PyValue::List(vec![
                    PyValue::Float(4.0),
                    PyValue::Float(0.5),
                    PyValue::Null,
                ]),
            ),
        ]);
        assert_eq!(
            dumps(&v),
            r#"{"vid": "a/b.mp4", "pred": 2, "gt": -1, "s": "\u00e9\"\n\ud83d\ude00\u007f", "l": [4.0, 0.5, null]}"#
        );
        assert_eq!(dumps(&PyValue::Float(1e16)), "1e+16");
        assert_eq!(dumps(&PyValue::Float(1.5e-5)), "1.5e-05");
        assert_eq!(dumps(&PyValue::Float(123.25)), "123.25");
    }
}
