//! The one planning step, shared by routing, `explain` and the healer: a routed event becomes
//! a complete, credential-free [`Delivery`] (planned once, by [`plan`]), which the store keeps as
//! it is and the history embeds. At send time [`requests`] builds the forge's exchange from it
//! with the credentials current then, and the fingerprint that recognises a repeat.

use notify::{Forge, Plan, PlanError, ProgressingMode, StatusEvent};

use super::record::Pending;

pub use super::record::Delivery;

/// The reason of events that post the in-progress state.
pub const PROGRESSING: &str = "Progressing";

/// The link to a delivery's page with `--public-url`.
pub fn page_link(public_url: Option<&str>, seq: u64) -> Option<String> {
    public_url.map(|base| format!("{}/deliveries/{seq}", base.trim_end_matches('/')))
}

/// What the forge plans from: the routed event as the record keeps it.
pub fn status_event(record: &Pending) -> StatusEvent<'_> {
    StatusEvent {
        target_url: record.delivery.target_url.as_deref(),
        description: record.description_override.as_deref(),
        status_id: &record.delivery.status_id,
        kind: &record.kind,
        name: &record.name,
        reason: &record.reason,
        severity: &record.severity,
        metadata: &record.metadata,
        status_id_from_expr: record.status_id_from_expr,
    }
}

/// Plans a routed delivery, once: fills in the commit, state and description the forge derives
/// from the event, and the status its requests are built from at send time. `Ok(false)`:
/// nothing to send (a `Progressing` event with `--progressing-status skip`).
pub fn plan(
    forge: &Forge,
    record: &mut Pending,
    progressing: ProgressingMode,
) -> Result<bool, PlanError> {
    let Some(plan) = forge.plan(&status_event(record), progressing)? else {
        return Ok(false);
    };
    let d = &mut record.delivery;
    d.planned = Some(plan.status());
    d.sha = plan.sha;
    d.state = plan.state;
    d.description = plan.description;
    Ok(true)
}

/// A delivery's exchange, as sent.
pub struct Prepared {
    pub plan: Plan,
    /// What the "last posted" memory compares ([`fingerprint`]).
    pub fingerprint: String,
}

/// The forge's requests for a delivery, built from its planned status with `forge`'s current
/// address and credentials. A record stored by an earlier build has no planned status: it is
/// planned here, once, from the event it keeps (linked to its page as that build did).
/// `Ok(None)`: nothing to send.
pub fn requests(
    forge: &Forge,
    record: &mut Pending,
    progressing: ProgressingMode,
    public_url: Option<&str>,
) -> Result<Option<Prepared>, PlanError> {
    if record.delivery.planned.is_none() {
        if record.delivery.target_url.is_none() {
            record.delivery.target_url = page_link(public_url, record.seq);
        }
        if !plan(forge, record, progressing)? {
            return Ok(None);
        }
    }
    let Some(status) = &record.delivery.planned else {
        return Ok(None);
    };
    let plan = forge.requests(status)?;
    let fingerprint = fingerprint(&plan, &record.delivery, public_url, record.seq);
    Ok(Some(Prepared { plan, fingerprint }))
}

/// The "last posted" fingerprint of a delivery's exchange. Our delivery page's link names the
/// delivery, so it differs between deliveries of the same state: left in, no repeat (an event
/// and a healed state that agree, a resync) would ever be recognised as already posted.
fn fingerprint(plan: &Plan, delivery: &Delivery, public_url: Option<&str>, seq: u64) -> String {
    match page_link(public_url, seq).filter(|own| delivery.target_url.as_ref() == Some(own)) {
        Some(own) => plan.fingerprint_without(&own),
        None => plan.fingerprint(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "5394cb7f48332b2de7c17dd8b8384bbc84b7e738";

    fn forge(token: &str) -> Forge {
        let config = notify::ForgeConfig {
            kind: notify::ForgeKind::GitHub,
            address: "https://github.com/o/r".into(),
            credentials: notify::Credentials {
                token: Some(notify::Secret::new(token)),
                ..notify::Credentials::default()
            },
            network: notify::NetworkConfig::default(),
        };
        Forge::new(config, &notify::ClientCache::new()).unwrap()
    }

    /// A routed record, before planning.
    fn routed(seq: u64, target_url: Option<&str>) -> Pending {
        let mut r = Pending::test("", "kustomization/app/uid");
        r.seq = seq;
        r.metadata = [("revision".to_owned(), format!("main@sha1:{SHA}"))].into();
        r.delivery.target_url = target_url.map(Into::into);
        r
    }

    #[test]
    fn a_delivery_is_planned_once_and_sent_with_the_current_credentials() {
        let mut r = routed(3, None);
        assert!(plan(&forge("old"), &mut r, ProgressingMode::Pending).unwrap());
        let d = &r.delivery;
        assert_eq!((d.sha.as_str(), d.state.as_str()), (SHA, "success"));
        assert_eq!(d.description, "reconciliation succeeded");
        let stored = serde_json::to_string(&r).unwrap();
        assert!(!stored.contains("old"), "no credential is stored: {stored}");
        let mut back: Pending = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, r);
        let sent = requests(&forge("rotated"), &mut back, ProgressingMode::Pending, None)
            .unwrap()
            .unwrap();
        assert_eq!(back, r, "building requests changes nothing");
        let auth = sent.plan.write.header_value("authorization").unwrap();
        assert!(auth.ends_with("rotated"), "{auth}");
        assert_eq!(sent.fingerprint, sent.plan.fingerprint());

        let mut progressing = routed(4, None);
        progressing.reason = PROGRESSING.into();
        assert!(!plan(&forge("t"), &mut progressing, ProgressingMode::Skip).unwrap());
        assert_eq!(progressing.delivery.planned, None);
    }

    #[test]
    fn our_page_link_is_left_out_of_the_fingerprint() {
        let public = Some("https://csc.example/");
        let built = |seq: u64, target_url: Option<String>| {
            let mut r = routed(seq, target_url.as_deref());
            assert!(plan(&forge("t"), &mut r, ProgressingMode::Pending).unwrap());
            requests(&forge("t"), &mut r, ProgressingMode::Pending, public)
                .unwrap()
                .unwrap()
        };
        let (a, b) = (
            built(5, page_link(public, 5)),
            built(9, page_link(public, 9)),
        );
        let body = String::from_utf8(a.plan.write.body.clone().unwrap()).unwrap();
        assert!(body.contains("https://csc.example/deliveries/5"), "{body}");
        assert_ne!(a.plan.fingerprint(), b.plan.fingerprint());
        assert_eq!(
            a.fingerprint, b.fingerprint,
            "the same state, delivered twice"
        );
        // A Provider's own link is part of what is posted.
        let (c, d) = (
            built(5, Some("https://ci/1".into())),
            built(9, Some("https://ci/2".into())),
        );
        assert_ne!(c.fingerprint, d.fingerprint);
        assert_eq!(c.fingerprint, c.plan.fingerprint());
    }

    #[test]
    fn a_record_of_the_previous_build_is_planned_when_sent() {
        let public = Some("https://csc.example");
        let mut old: Pending =
            serde_json::from_str(crate::delivery::record::tests::OLD_PENDING).unwrap();
        old.delivery.target_url = None;
        let sent = requests(&forge("t"), &mut old, ProgressingMode::Pending, public)
            .unwrap()
            .unwrap();
        // Linked to its page, as that build did at send time, and remembered.
        assert_eq!(
            old.delivery.target_url.as_deref(),
            Some("https://csc.example/deliveries/7")
        );
        assert_eq!(old.delivery.state, "success");
        assert!(old.delivery.planned.is_some());
        let body = String::from_utf8(sent.plan.write.body.clone().unwrap()).unwrap();
        assert!(body.contains("https://csc.example/deliveries/7"), "{body}");

        // The same status routed by this build gives the same "last posted" fingerprint.
        let mut new = routed(8, page_link(public, 8).as_deref());
        new.delivery.provider_uid = old.delivery.provider_uid.clone();
        assert!(plan(&forge("t"), &mut new, ProgressingMode::Pending).unwrap());
        let again = requests(&forge("t"), &mut new, ProgressingMode::Pending, public)
            .unwrap()
            .unwrap();
        assert_eq!(again.fingerprint, sent.fingerprint);
    }
}
