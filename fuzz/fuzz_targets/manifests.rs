//! Fuzz target: the controller's manifest loading (`controller::manifests::load_text`: YAML
//! document splitting, parsing, Provider/Alert/Secret validation, CEL compilation) on arbitrary
//! text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let load = controller::manifests::load_text("fuzz.yaml", &text);
    assert_eq!(load.files, 1);
    for problem in &load.problems {
        let _ = problem.to_string();
    }
    for warning in &load.warnings {
        let _ = warning.to_string();
    }
});
