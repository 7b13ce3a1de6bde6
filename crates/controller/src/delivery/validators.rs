//! The validators of conditional reads (issue 12), kept in the delivery store beside the "last
//! posted" memory: per Provider and read URL, the `ETag` a forge sent and the answer it came
//! with, so that with `--read-before-write` a `304 Not Modified` stands for that answer.

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use notify::Validator;

/// `provider UID \x1f read URL` → `URL \n ETag \n body` (neither a URL nor a header value can
/// hold a newline).
pub(crate) const VALIDATORS: TableDefinition<&str, &[u8]> = TableDefinition::new("validators");

/// Validators kept at most; each holds at most [`notify::MAX_VALIDATED_BYTES`] of answer.
/// Forgetting one costs an unconditional read later, never a wrong status.
const VALIDATORS_CAP: u64 = 5_000;

pub(crate) fn key(provider_uid: &str, url: &str) -> String {
    format!("{provider_uid}\u{1f}{url}")
}

fn encode(v: &Validator) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.url.len() + v.etag.len() + v.body.len() + 2);
    out.extend_from_slice(v.url.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(v.etag.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&v.body);
    out
}

pub(crate) fn decode(bytes: &[u8]) -> Option<Validator> {
    let mut parts = bytes.splitn(3, |b| *b == b'\n');
    let url = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    let etag = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    let body = parts.next()?.to_vec();
    Some(Validator { url, etag, body })
}

/// Keeps `v` for `provider_uid` (replacing the one for the same URL), within the cap.
pub(crate) fn keep(
    txn: &WriteTransaction,
    provider_uid: &str,
    v: &Validator,
) -> Result<(), redb::Error> {
    if v.url.contains('\n') || v.etag.contains('\n') {
        return Ok(());
    }
    let mut table = txn.open_table(VALIDATORS)?;
    table.insert(key(provider_uid, &v.url).as_str(), encode(v).as_slice())?;
    if table.len()? > VALIDATORS_CAP {
        let keys: Vec<String> = table
            .iter()?
            .take(256)
            .filter_map(|e| e.ok())
            .map(|(k, _)| k.value().to_string())
            .collect();
        for k in keys {
            table.remove(k.as_str())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let v = Validator {
            url: "https://api.github.com/repos/o/r/commits/abc/statuses?per_page=50".into(),
            etag: "W/\"0123\"".into(),
            body: b"[{\"a\":\"b\\nc\"}]\n\xff".to_vec(),
        };
        assert_eq!(decode(&encode(&v)), Some(v));
        assert_eq!(decode(b"only a url"), None);
    }
}
