//! Our generated CRDs accept exactly what Flux's do: the spec schemas are equal to Flux's
//! v1.9.3 ones once descriptions are set aside, and the committed copies under `config/` are
//! what `commit-status-controller crd` prints today.

use serde_json::Value;

fn strip_descriptions(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("description");
            map.values_mut().for_each(strip_descriptions);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_descriptions),
        _ => {}
    }
}

fn spec_schema(crd: &Value, version: usize) -> Value {
    let mut s =
        crd["spec"]["versions"][version]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone();
    strip_descriptions(&mut s);
    s
}

fn flux(path: &str) -> Value {
    let text = std::fs::read_to_string(format!(
        "{}/tests/flux-crds/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

#[test]
fn spec_schemas_match_flux() {
    for (ours, file) in [
        (
            serde_json::to_value(api::crd::provider_crd()).unwrap(),
            "v1.9.3/providers.yaml",
        ),
        (
            serde_json::to_value(api::crd::alert_crd()).unwrap(),
            "v1.9.3/alerts.yaml",
        ),
    ] {
        let theirs = flux(file);
        assert_eq!(spec_schema(&ours, 0), spec_schema(&theirs, 0), "{file}");
        assert_eq!(ours["spec"]["names"], theirs["spec"]["names"], "{file}");
        assert_eq!(ours["spec"]["scope"], theirs["spec"]["scope"], "{file}");
    }
}

#[test]
fn committed_crds_are_current() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_commit-status-controller"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    let committed = std::fs::read_to_string(format!(
        "{}/../../config/crd/crds.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        committed,
        "config/crd/crds.yaml is stale: run `cargo run -- crd > config/crd/crds.yaml`"
    );
}

#[test]
fn committed_beside_flux_crds_are_ours_and_current() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_commit-status-controller"))
        .args(["crd", "--api-group", "own"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    assert!(
        generated.contains("notification.commit-status-controller.dev")
            && !generated.contains("notification.toolkit.fluxcd.io"),
        "the beside-Flux overlay must not replace Flux's own CRDs"
    );
    let committed = std::fs::read_to_string(format!(
        "{}/../../config/beside-flux/crds.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    assert_eq!(
        generated, committed,
        "config/beside-flux/crds.yaml is stale: run `cargo run -- crd --api-group own > config/beside-flux/crds.yaml`"
    );
}
