//! Git remote addresses (URLs, scp-like `git@host:path`, local paths) as Flux's
//! `parseGitAddress` reads them: a `<scheme>://<host>` base and a repository id (the path).
//!
//! Parsing never fails, as in Flux (anything unrecognised is a local path); each forge then
//! checks that the id has the shape it needs and reports its own error.

use percent_encoding::percent_decode_str;
use url::Url;

/// URL schemes recognised as Git transports (`chainguard-dev/git-urls`).
const TRANSPORT_SCHEMES: [&str; 9] = [
    "ssh", "git", "git+ssh", "http", "https", "ftp", "ftps", "rsync", "file",
];

/// git-urls refuses to run its scp pattern on longer input.
const MAX_SCP_LEN: usize = 2048;

/// A parsed repository address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitAddress {
    /// `https` for `ssh` and scp-like addresses, otherwise the address's own scheme.
    pub scheme: String,
    /// `host[:port]`, without user info; empty for local paths.
    pub authority: String,
    /// `<scheme>://<authority>`: the base every forge derives its API URL from.
    pub host: String,
    /// The path without leading `/` and without one trailing `.git` (a trailing `/` is kept).
    pub id: String,
}

impl GitAddress {
    /// Reads an address the way Flux does: URL with a Git transport scheme, else scp-like
    /// `[user@]host:path`, else a local path.
    pub fn parse(address: &str) -> GitAddress {
        let (scheme, authority, path) = parse_url(address)
            .or_else(|| parse_scp(address))
            .unwrap_or_else(|| ("file".to_owned(), String::new(), address.to_owned()));
        let scheme = if scheme == "ssh" {
            "https".to_owned()
        } else {
            scheme
        };
        let id = path.trim_start_matches('/');
        let id = id.strip_suffix(".git").unwrap_or(id).to_owned();
        GitAddress {
            host: format!("{scheme}://{authority}"),
            scheme,
            authority,
            id,
        }
    }

    /// The host name without port.
    pub fn hostname(&self) -> &str {
        // An IPv6 literal keeps its brackets and its colons.
        if let Some(end) = self.authority.find(']') {
            return &self.authority[..=end];
        }
        self.authority.split(':').next().unwrap_or_default()
    }

    /// The id split on `/`.
    pub fn segments(&self) -> Vec<&str> {
        self.id.split('/').collect()
    }
}

/// The address as it may be shown and stored: `scheme://host[:port]/path`, without user info,
/// query or fragment (where a token may be written). scp-like addresses read as
/// `ssh://host/path`; anything else keeps only what follows its last `@`, without a query.
pub fn redacted(address: &str) -> String {
    let address = address.trim();
    if let Ok(url) = Url::parse(address)
        && (url.host_str().is_some() || url.scheme() == "file")
    {
        let mut out = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
        if let Some(port) = url.port() {
            out.push_str(&format!(":{port}"));
        }
        out.push_str(url.path());
        return out;
    }
    let address = address.split(['?', '#']).next().unwrap_or_default();
    let (scheme, rest) = match address.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, address),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{rest}"),
        None => match parse_scp(rest) {
            Some((scheme, host, path)) => {
                format!("{scheme}://{host}/{}", path.trim_start_matches('/'))
            }
            None => rest.to_owned(),
        },
    }
}

fn parse_url(address: &str) -> Option<(String, String, String)> {
    let url = Url::parse(address).ok()?;
    if !TRANSPORT_SCHEMES.contains(&url.scheme()) {
        return None;
    }
    let mut authority = url.host_str().unwrap_or_default().to_owned();
    if let Some(port) = url.port() {
        authority = format!("{authority}:{port}");
    }
    // Go's URL parser hands out the decoded path; forges re-escape segments themselves.
    let path = percent_decode_str(url.path())
        .decode_utf8_lossy()
        .into_owned();
    Some((url.scheme().to_owned(), authority, path))
}

/// `^([a-zA-Z0-9-._~]+@)?([a-zA-Z0-9._-]+):([a-zA-Z0-9./._-]+)(?:\?||$)(.*)$`, by hand.
fn parse_scp(address: &str) -> Option<(String, String, String)> {
    if address.len() > MAX_SCP_LEN || address.contains(['\n', '\r']) {
        return None;
    }
    let user_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~');
    let host_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let path_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '_' | '-');

    let mut rest = address;
    if let Some((user, after)) = address.split_once('@')
        && !user.is_empty()
        && user.chars().all(user_char)
    {
        rest = after;
    }
    let host_len = rest.find(|c| !host_char(c)).unwrap_or(rest.len());
    if host_len == 0 || !rest[host_len..].starts_with(':') {
        return None;
    }
    let host = &rest[..host_len];
    let after_colon = &rest[host_len + 1..];
    let path_len = after_colon
        .find(|c| !path_char(c))
        .unwrap_or(after_colon.len());
    if path_len == 0 {
        return None;
    }
    Some((
        "ssh".to_owned(),
        host.to_owned(),
        after_colon[..path_len].to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(address: &str) -> (String, String) {
        let a = GitAddress::parse(address);
        (a.host, a.id)
    }

    #[test]
    fn flux_vectors() {
        let cases = [
            (
                "https://github.com/foo/bar",
                "https://github.com",
                "foo/bar",
            ),
            (
                "https://example.com/foo/bar",
                "https://example.com",
                "foo/bar",
            ),
            (
                "https://gitlab.com/foo/bar.git",
                "https://gitlab.com",
                "foo/bar",
            ),
            (
                "git@gitlab.com:foo/bar.git",
                "https://gitlab.com",
                "foo/bar",
            ),
            (
                "ssh://git@github.com/stefanprodan/podinfo",
                "https://github.com",
                "stefanprodan/podinfo",
            ),
            (
                "https://gitlab.com/foo/bar/foo.git",
                "https://gitlab.com",
                "foo/bar/foo",
            ),
            ("", "file://", ""),
            ("/foo/bar", "file://", "foo/bar"),
        ];
        for (address, host, id) in cases {
            assert_eq!(
                parsed(address),
                (host.to_owned(), id.to_owned()),
                "address {address:?}"
            );
        }
    }

    #[test]
    fn other_forms() {
        let cases = [
            (
                "https://user:pw@example.com:8443/a/b?x=1",
                "https://example.com:8443",
                "a/b",
            ),
            (
                "https://github.com/foo/bar/",
                "https://github.com",
                "foo/bar/",
            ),
            (
                "http://gitlab.local/group/sub/project",
                "http://gitlab.local",
                "group/sub/project",
            ),
            ("ssh://git@host:2222/a/b.git", "https://host:2222", "a/b"),
            ("git://example.com/a/b", "git://example.com", "a/b"),
            ("github.com:foo/bar", "https://github.com", "foo/bar"),
            (
                "git@host.example:a/b.git?ref=main",
                "https://host.example",
                "a/b",
            ),
            (
                "https://dev.azure.com/o/My%20Project/_git/r",
                "https://dev.azure.com",
                "o/My Project/_git/r",
            ),
            ("file:///srv/git/repo.git", "file://", "srv/git/repo"),
            ("relative/path", "file://", "relative/path"),
            ("C:\\repo", "file://", "C:\\repo"),
            ("https://gitlab.com/1234", "https://gitlab.com", "1234"),
        ];
        for (address, host, id) in cases {
            assert_eq!(
                parsed(address),
                (host.to_owned(), id.to_owned()),
                "address {address:?}"
            );
        }
    }

    #[test]
    fn redacted_forms() {
        let cases = [
            (
                "https://user:ghp_tok@github.com/o/r?private_token=x#f",
                "https://github.com/o/r",
            ),
            (
                "https://oauth2:glpat@gitlab.example:8443/g/p.git",
                "https://gitlab.example:8443/g/p.git",
            ),
            ("  https://github.com/o/r \n", "https://github.com/o/r"),
            ("git@github.com:o/r.git", "ssh://github.com/o/r.git"),
            ("ssh://git:pw@host:2222/a/b", "ssh://host:2222/a/b"),
            ("user:tok@host/x", "host/x"),
            ("https://us er:tok@host/x?y", "https://host/x"),
            ("/srv/git/repo?token=x", "/srv/git/repo"),
            ("file:///srv/git/repo", "file:///srv/git/repo"),
            ("http://[::1]:8080/a", "http://[::1]:8080/a"),
        ];
        for (address, want) in cases {
            assert_eq!(redacted(address), want, "{address:?}");
        }
    }

    #[test]
    fn hostname_and_scheme() {
        let a = GitAddress::parse("https://ghe.example.com:8443/a/b");
        assert_eq!(a.scheme, "https");
        assert_eq!(a.authority, "ghe.example.com:8443");
        assert_eq!(a.hostname(), "ghe.example.com");
        assert_eq!(
            GitAddress::parse("git@github.com:a/b").hostname(),
            "github.com"
        );
        assert_eq!(
            GitAddress::parse("http://[::1]:8080/a/b").hostname(),
            "[::1]"
        );
        assert_eq!(GitAddress::parse("http://[::1]/a/b").hostname(), "[::1]");
    }
}
