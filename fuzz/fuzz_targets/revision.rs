//! Fuzz target: the revision parser (`notify::revision::parse` and `from_metadata`), with the
//! invariant that an accepted revision yields exactly 40 ASCII hex characters.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use notify::revision::{REVISION_KEYS, from_metadata, parse};

const VALID: &str = "5394cb7f48332b2de7c17dd8b8384bbc84b7e738";

fn assert_sha(sha: &str, input: &str) {
    assert_eq!(sha.len(), 40, "{sha:?} from {input:?}");
    assert!(
        sha.bytes().all(|b| b.is_ascii_hexdigit()),
        "{sha:?} from {input:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    // First byte: which of REVISION_KEYS are present and which one holds the fuzzed value.
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let input = String::from_utf8_lossy(rest);

    let parsed = parse(&input);
    if let Ok(sha) = parsed {
        assert_sha(sha, &input);
        assert!(input.ends_with(sha), "{sha:?} is not the tail of {input:?}");
    }

    let mut metadata = BTreeMap::new();
    let fuzzed_key = REVISION_KEYS[usize::from(selector >> 4) % REVISION_KEYS.len()];
    for (i, key) in REVISION_KEYS.iter().enumerate() {
        if selector & (1 << i) != 0 {
            metadata.insert((*key).to_owned(), VALID.to_owned());
        }
    }
    metadata.insert(fuzzed_key.to_owned(), input.clone().into_owned());
    let from_meta = from_metadata(&metadata);
    if let Ok(sha) = &from_meta {
        assert_sha(sha, &input);
    }
    // The first present key decides, with no fallback to a later one.
    let first = REVISION_KEYS
        .iter()
        .find_map(|k| metadata.get(*k))
        .expect("one key is always present");
    assert_eq!(from_meta, parse(first).map(str::to_owned));
});
