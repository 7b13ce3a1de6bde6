//! Byte-exact encodings the forges' Go SDKs produce: `encoding/json` string escaping and
//! `net/url`'s path and query escaping. Kept apart so every forge module encodes the same way.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Go's `url.PathEscape`: unreserved characters and `$&+:=@` stay.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b':')
    .remove(b'=')
    .remove(b'@');

/// Go's `url.QueryEscape`: only unreserved characters stay (space becomes `+` separately).
const QUERY_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b' ');

/// One path segment, escaped like Go's `url.PathEscape`.
pub(crate) fn path_segment(s: &str) -> String {
    utf8_percent_encode(s, PATH_SEGMENT).to_string()
}

/// A query value, escaped like Go's `url.QueryEscape`.
pub(crate) fn query_value(s: &str) -> String {
    utf8_percent_encode(s, QUERY_COMPONENT)
        .to_string()
        .replace(' ', "+")
}

/// A JSON object written field by field, so the field order is the one the forge's SDK sends.
pub(crate) struct JsonObject {
    buf: String,
    escape_html: bool,
}

impl JsonObject {
    /// `escape_html`: Go's `json.Marshal` escapes `<`, `>`, `&`; go-github turns that off.
    pub(crate) fn new(escape_html: bool) -> Self {
        Self {
            buf: String::from("{"),
            escape_html,
        }
    }

    fn key(&mut self, key: &str) {
        if self.buf.len() > 1 {
            self.buf.push(',');
        }
        string(&mut self.buf, key, self.escape_html);
        self.buf.push(':');
    }

    pub(crate) fn str(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        string(&mut self.buf, value, self.escape_html);
        self
    }

    pub(crate) fn object(mut self, key: &str, value: JsonObject) -> Self {
        self.key(key);
        self.buf.push_str(&value.finish());
        self
    }

    pub(crate) fn finish(mut self) -> String {
        self.buf.push('}');
        self.buf
    }
}

/// A JSON string as Go's `encoding/json` writes it (Go ≥ 1.22 escapes).
fn string(out: &mut String, s: &str, escape_html: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' if escape_html => out.push_str(&format!("\\u{:04x}", c as u32)),
            // Always escaped by Go: JSONP-hostile line separators.
            '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_path_escape() {
        assert_eq!(
            path_segment("my-group/sub/my.repo"),
            "my-group%2Fsub%2Fmy.repo"
        );
        assert_eq!(path_segment("My Project"), "My%20Project");
        assert_eq!(path_segment("a$&+:=@b;,?#%"), "a$&+:=@b%3B%2C%3F%23%25");
        assert_eq!(path_segment("ü"), "%C3%BC");
    }

    #[test]
    fn go_query_escape() {
        assert_eq!(
            query_value("kustomization/flux-system/0c9c2e41"),
            "kustomization%2Fflux-system%2F0c9c2e41"
        );
        assert_eq!(query_value("a b+c&d=e~f"), "a+b%2Bc%26d%3De~f");
    }

    #[test]
    fn go_json_strings() {
        let body = JsonObject::new(true)
            .str("a", "<x>&\"q\"\\\n\t\u{1}\u{2028}é")
            .finish();
        assert_eq!(
            body,
            r#"{"a":"\u003cx\u003e\u0026\"q\"\\\n\t\u0001\u2028é"}"#
        );
        let body = JsonObject::new(false)
            .str("a", "<x>&")
            .object("o", JsonObject::new(false).str("b", "c"))
            .finish();
        assert_eq!(body, r#"{"a":"<x>&","o":{"b":"c"}}"#);
        // The output is valid JSON that decodes back to the input.
        let tricky = "<a href=\"x\">&\u{7f}\u{1f}\u{2029}";
        let v: serde_json::Value =
            serde_json::from_str(&JsonObject::new(true).str("k", tricky).finish()).unwrap();
        assert_eq!(v["k"], tricky);
    }
}
