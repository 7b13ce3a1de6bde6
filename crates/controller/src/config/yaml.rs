//! YAML errors as users see them: a position and the parser's words, never the document's
//! text (a Secret's value must not reach a log). Shared by the manifest files and resolution.

/// A YAML syntax error as line, column (of the file, counting from 1) and the parser's own
/// words, without any text of the document: serde-saphyr's rendering quotes the lines around
/// the error and some messages quote the offending scalar, and in a Secret file either can be
/// a token. Anything quoted in the message is left out.
pub fn yaml_error(e: &serde_saphyr::Error, first_line: usize) -> String {
    use serde_saphyr::MessageFormatter as _;
    let e = e.without_snippet();
    let message = without_quoted(&serde_saphyr::UserMessageFormatter.format_message(e));
    match e.location() {
        Some(at) if at.line() > 0 => format!(
            "line {}, column {}: {message}",
            at.line() as usize + first_line,
            at.column()
        ),
        _ => message,
    }
}

/// `text` with every quoted part (`"…"`, `'…'`, `` `…` ``) replaced by `…`, except a single
/// punctuation character (`':'`, which names syntax, not data), and control characters dropped.
pub(crate) fn without_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut open: Option<(char, String)> = None;
    let mut previous = ' ';
    for c in text.chars() {
        // An apostrophe inside a word ("can't") opens nothing.
        let opens = matches!(c, '"' | '`') || (c == '\'' && !previous.is_alphanumeric());
        previous = c;
        match &mut open {
            Some((q, quoted)) if c == *q => {
                let mut chars = quoted.chars();
                match (chars.next(), chars.next()) {
                    (Some(p), None) if p.is_ascii_punctuation() => {
                        out.extend([c, p, c]);
                    }
                    _ => out.push('…'),
                }
                open = None;
            }
            Some((_, quoted)) => quoted.push(c),
            None if opens => open = Some((c, String::new())),
            None if c.is_control() => out.push(' '),
            None => out.push(c),
        }
    }
    if open.is_some() {
        out.push('…');
    }
    out.trim().to_string()
}
