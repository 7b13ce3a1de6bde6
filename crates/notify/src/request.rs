//! One HTTP exchange as plain data: the request a forge module builds, a dry run prints and the
//! transport sends (printing it never shows a credential), and the answer the transport brings
//! back for the forge module to read.

use std::fmt;

/// Header names whose values are credentials (compared case-insensitively).
const SENSITIVE_HEADERS: [&str; 5] = [
    "authorization",
    "private-token",
    "proxy-authorization",
    "cookie",
    "x-api-key",
];

const REDACTED: &str = "[redacted]";

/// One HTTP request as data. `Debug`/`Display` redact credentials (`Authorization`,
/// `PRIVATE-TOKEN`, proxy auth values show as `[redacted]`).
#[derive(Clone, PartialEq, Eq)]
pub struct ForgeRequest {
    /// HTTP method.
    pub method: http::Method,
    /// Absolute URL, query included.
    pub url: String,
    /// Headers in the order they are sent.
    pub headers: Vec<(String, String)>,
    /// Request body, if any.
    pub body: Option<Vec<u8>>,
}

impl ForgeRequest {
    pub(crate) fn new(method: http::Method, url: String) -> Self {
        Self {
            method,
            url,
            headers: Vec::new(),
            body: None,
        }
    }

    pub(crate) fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub(crate) fn json(mut self, content_type: &str, body: Vec<u8>) -> Self {
        self.headers
            .push(("Content-Type".to_owned(), content_type.to_owned()));
        self.body = Some(body);
        self
    }

    /// The value of the first header called `name` (case-insensitive).
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy), or `""`.
    pub fn body_text(&self) -> String {
        self.body
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default()
            .into_owned()
    }

    fn redacted_headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(name, value)| {
            let value = if is_sensitive(name) {
                REDACTED
            } else {
                value.as_str()
            };
            (name.as_str(), value)
        })
    }

    /// Curl-like multi-line text with secrets replaced:
    ///
    /// ```text
    /// POST https://api.github.com/repos/o/r/statuses/<sha>
    /// Authorization: [redacted]
    ///
    /// {"state":"success",...}
    /// ```
    pub fn redacted(&self) -> String {
        let mut out = format!("{} {}\n", self.method, self.url);
        for (name, value) in self.redacted_headers() {
            out.push_str(&format!("{name}: {value}\n"));
        }
        if let Some(body) = &self.body {
            out.push('\n');
            out.push_str(&String::from_utf8_lossy(body));
        }
        out
    }
}

/// A complete answer, as the transport read it.
pub(crate) struct Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

fn is_sensitive(name: &str) -> bool {
    SENSITIVE_HEADERS
        .iter()
        .any(|s| s.eq_ignore_ascii_case(name))
}

impl fmt::Display for ForgeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for ForgeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<_> = self.redacted_headers().collect();
        f.debug_struct("ForgeRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &headers)
            .field("body", &self.body.as_deref().map(String::from_utf8_lossy))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted() {
        let req = ForgeRequest::new(http::Method::POST, "https://x/y".to_owned())
            .header("Authorization", "Bearer ghp_secret")
            .header("PRIVATE-TOKEN", "glpat-secret")
            .header("proxy-authorization", "Basic c2VjcmV0")
            .header("Accept", "application/json")
            .json("application/json", b"{\"a\":1}".to_vec());
        for text in [req.redacted(), format!("{req}"), format!("{req:?}")] {
            assert!(!text.contains("secret"), "{text}");
            assert!(!text.contains("c2VjcmV0"), "{text}");
            assert!(text.contains("application/json"), "{text}");
        }
        assert_eq!(
            req.redacted(),
            "POST https://x/y\nAuthorization: [redacted]\nPRIVATE-TOKEN: [redacted]\n\
             proxy-authorization: [redacted]\nAccept: application/json\n\
             Content-Type: application/json\n\n{\"a\":1}"
        );
        assert_eq!(req.header_value("authorization"), Some("Bearer ghp_secret"));
        assert_eq!(req.body_text(), "{\"a\":1}");
    }
}
