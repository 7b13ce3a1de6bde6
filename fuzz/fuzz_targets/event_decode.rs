//! Fuzz target: the event API's body decoder (`api::Event::decode`), then `to_json` and `group`
//! on every event it accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = api::Event::decode(data) {
        let json = event.to_json();
        assert!(json.is_object());
        let group = event.group();
        assert!(!group.contains('/'), "group {group:?} contains a slash");
        let _ = event.object_ref();
    }
});
