//! Unit tests for routing: Flux's `TestEventMatchesAlert`, `TestFilterAlertsForEvent`,
//! `TestGetNotificationParams`, `TestCombineEventMetadata`, `TestCreateCommitStatus` and the
//! metadata cleanup vectors (§7.2, §7.3).

use std::collections::BTreeMap;

use api::fixtures::{SHA, UID};
use api::{Alert, CrossNamespaceObjectReference, Provider, Secret};
use notify::ClientCache;

use super::*;
use crate::config::catalog::Objects;

fn provider(ns: &str, name: &str, type_: &str) -> Provider {
    Provider::test(ns, name).of_type(type_).secret_ref("tok")
}

fn alert(ns: &str, name: &str, sources: Vec<CrossNamespaceObjectReference>) -> Alert {
    Alert::test(ns, name).provider("p").sources(sources)
}

fn source(kind: &str, name: &str, ns: Option<&str>) -> CrossNamespaceObjectReference {
    let source = CrossNamespaceObjectReference::test(kind, name);
    match ns {
        Some(ns) => source.in_namespace(ns),
        None => source,
    }
}

fn secret(ns: &str) -> Secret {
    Secret::test(ns, "tok").with("token", "ghp_x")
}

fn event(ns: &str, name: &str, severity: &str, md: &[(&str, &str)]) -> Event {
    Event::test(ns, name)
        .severity(severity)
        .message("some excluded message")
        .only_meta(md)
}

fn catalog(providers: Vec<Provider>, alerts: Vec<Alert>, secrets: Vec<Secret>) -> Catalog {
    let providers = providers
        .into_iter()
        .map(|p| {
            let exprs = crate::config::status_expr::check_provider(&p).unwrap();
            (p, exprs)
        })
        .collect();
    Catalog::build(
        Objects {
            providers,
            alerts,
            secrets,
        },
        &ClientCache::new(),
    )
}

fn matched(c: &Catalog, e: &Event) -> usize {
    matching_alerts(c, e, None).len()
}

#[test]
fn event_matches_alert() {
    let e = event("foo-ns", "foo", "info", &[]);
    let one = |src: CrossNamespaceObjectReference, severity: &str| {
        let mut a = alert("test-ns", "a", vec![src]);
        a.spec.event_severity = severity.into();
        matched(&catalog(vec![], vec![a], vec![]), &e)
    };
    assert_eq!(
        one(source("Kustomization", "foo", Some("other")), "info"),
        0
    );
    assert_eq!(
        one(source("GitRepository", "foo", Some("foo-ns")), "info"),
        0
    );
    assert_eq!(
        one(source("Kustomization", "foo", Some("foo-ns")), "error"),
        0
    );
    assert_eq!(one(source("Kustomization", "*", Some("foo-ns")), "info"), 1);
    assert_eq!(
        one(source("Kustomization", "bar", Some("foo-ns")), "info"),
        0
    );
    assert_eq!(
        one(source("Kustomization", "foo", Some("foo-ns")), "info"),
        1
    );
    let mut err = e.clone();
    err.severity = "error".into();
    let a = alert(
        "test-ns",
        "a",
        vec![source("Kustomization", "foo", Some("foo-ns"))],
    );
    assert_eq!(matched(&catalog(vec![], vec![a], vec![]), &err), 1);
    // matchLabels: without the object's labels nothing matches; with them, every pair must.
    let mut labelled = source("Kustomization", "*", Some("foo-ns"));
    labelled.match_labels = Some(BTreeMap::from([("app".into(), "podinfo".into())]));
    assert_eq!(one(labelled.clone(), "info"), 0);
    let c = catalog(vec![], vec![alert("test-ns", "a", vec![labelled])], vec![]);
    assert_eq!(alerts_needing_labels(&c, &e).len(), 1);
    let podinfo = BTreeMap::from([("app".to_string(), "podinfo".to_string())]);
    let other = BTreeMap::from([("aaa".to_string(), "bbb".to_string())]);
    assert_eq!(matching_alerts(&c, &e, Some(&podinfo)).len(), 1);
    assert_eq!(matching_alerts(&c, &e, Some(&other)).len(), 0);
}

/// `explain` reports the rule routing applies: what does not match says why.
#[test]
fn a_mismatch_says_why() {
    let e = event("foo-ns", "foo", "info", &[]);
    let why = |a: Alert, labels: Option<&BTreeMap<String, String>>| {
        let c = catalog(vec![], vec![a], vec![]);
        let entry = c.alerts().next().unwrap().clone();
        mismatch(&entry, &e, labels)
    };
    let sources = vec![
        source("Kustomization", "foo", Some("bar-ns")),
        source("HelmRelease", "foo", Some("foo-ns")),
        source("Kustomization", "bar", Some("foo-ns")),
    ];
    assert_eq!(
        why(alert("foo-ns", "a", sources), None).as_deref(),
        Some(
            "eventSources[0]: namespace \"foo-ns\" is not \"bar-ns\"; eventSources[1]: kind \"Kustomization\" is not \"HelmRelease\"; eventSources[2]: name \"foo\" is not \"bar\""
        )
    );
    let mut errors_only = alert("foo-ns", "a", vec![source("Kustomization", "*", None)]);
    errors_only.spec.event_severity = "error".into();
    assert_eq!(
        why(errors_only, None).as_deref(),
        Some("eventSources[0]: severity \"info\" is filtered out by eventSeverity \"error\"")
    );
    let mut suspended = alert("foo-ns", "a", vec![source("Kustomization", "*", None)]);
    suspended.spec.suspend = true;
    assert_eq!(
        why(suspended, None).as_deref(),
        Some("the Alert is suspended")
    );
    assert_eq!(
        why(alert("foo-ns", "a", vec![]), None).as_deref(),
        Some("the Alert has no event sources")
    );
    let mut labelled = source("Kustomization", "*", None);
    labelled.match_labels = Some(BTreeMap::from([("app".into(), "podinfo".into())]));
    let labelled = alert("foo-ns", "a", vec![labelled]);
    assert_eq!(
        why(labelled.clone(), None).as_deref(),
        Some("eventSources[0]: matchLabels needs the object's labels, which only a cluster has")
    );
    let other = BTreeMap::from([("app".to_string(), "other".to_string())]);
    assert!(
        why(labelled.clone(), Some(&other))
            .unwrap()
            .contains("do not match matchLabels")
    );
    let podinfo = BTreeMap::from([("app".to_string(), "podinfo".to_string())]);
    assert_eq!(why(labelled, Some(&podinfo)), None);
    let mut excluding = alert("foo-ns", "a", vec![source("Kustomization", "*", None)]);
    excluding.spec.exclusion_list = vec!["excluded".into()];
    assert_eq!(
        why(excluding, None).as_deref(),
        Some("the message matches exclusionList entry \"excluded\"")
    );
}

#[test]
fn filter_alerts_for_event() {
    let e = event("foo-ns", "foo", "info", &[]);
    let a = |name: &str| alert("foo-ns", name, vec![source("Kustomization", "*", None)]);
    let count = |alerts: Vec<Alert>| matched(&catalog(vec![], alerts, vec![]), &e);
    assert_eq!(count(vec![a("a"), a("b")]), 2);
    let mut suspended = a("b");
    suspended.spec.suspend = true;
    assert_eq!(count(vec![a("a"), suspended]), 1);
    let mut inc = a("a");
    inc.spec.inclusion_list = vec!["some unmatch include".into()];
    assert_eq!(count(vec![inc]), 0);
    let (mut x, mut y) = (a("a"), a("b"));
    x.spec.inclusion_list = vec!["unmatch".into()];
    y.spec.inclusion_list = vec!["some".into()];
    assert_eq!(count(vec![x, y]), 1);
    let mut exc = a("b");
    exc.spec.exclusion_list = vec!["excluded message".into()];
    assert_eq!(count(vec![a("a"), exc.clone()]), 1);
    let mut both = exc;
    both.spec.inclusion_list = vec!["excluded message".into()];
    assert_eq!(count(vec![a("a"), both]), 1);
    let other_ns = alert(
        "foo-ns",
        "c",
        vec![source("Kustomization", "*", Some("foo-bar"))],
    );
    assert_eq!(count(vec![other_ns]), 0);
}

#[test]
fn cleanup_and_token() {
    let mut e = event("ns", "n", "info", &[]);
    let g = "kustomize.toolkit.fluxcd.io";
    e.metadata = Some(
        [
            format!("{g}/foo"),
            format!("{g}/bar"),
            format!("{g}/checksum"),
            format!("{g}/Digest"),
            "source.toolkit.fluxcd.io/baz".into(),
            format!("{g}/zzz"),
            format!("{g}/aa/bb"),
            "event.toolkit.fluxcd.io/baz".into(),
            "event.toolkit.fluxcd.io/bazfoo".into(),
            format!("{g}/token"),
        ]
        .into_iter()
        .map(|k| (k, "v".to_string()))
        .collect(),
    );
    cleanup_metadata(&mut e);
    strip_token(&mut e);
    let keys: Vec<_> = e.metadata.unwrap().into_keys().collect();
    assert_eq!(
        keys,
        [
            "event.toolkit.fluxcd.io/baz",
            "event.toolkit.fluxcd.io/bazfoo",
            &format!("{g}/aa/bb"),
            &format!("{g}/bar"),
            &format!("{g}/foo"),
            &format!("{g}/zzz"),
        ]
    );
    let mut empty = Event::default();
    cleanup_metadata(&mut empty);
    assert_eq!(empty.metadata, Some(BTreeMap::new()));
}

#[test]
fn metadata_merge_precedence_and_conflicts() {
    let g = "kustomize.toolkit.fluxcd.io";
    let e = event(
        "ns",
        "n",
        "info",
        &[
            ("event.toolkit.fluxcd.io/summary", "objectSummary"),
            ("event.toolkit.fluxcd.io/objectMetadata1", "o1"),
            (&format!("{g}/controllerMetadata1"), "c1"),
            (&format!("{g}/summary"), "controllerSummary"),
        ],
    );
    let mut a = alert("ns", "a", vec![]);
    a.spec.event_metadata =
        BTreeMap::from([("foo".into(), "bar".into()), ("summary".into(), "x".into())]);
    a.spec.summary = "alertSummary".into();
    let (merged, conflicts) = merge_metadata(&e, &a);
    assert_eq!(merged["summary"], "controllerSummary");
    assert_eq!(merged["foo"], "bar");
    assert_eq!(merged["objectMetadata1"], "o1");
    assert_eq!(merged["controllerMetadata1"], "c1");
    assert_eq!(
        conflicts["summary"],
        [
            "involved object annotations",
            "Alert object .spec.eventMetadata",
            "Alert object .spec.summary",
            "involved object controller metadata"
        ]
    );
    let (merged, conflicts) =
        merge_metadata(&event("ns", "n", "info", &[]), &alert("ns", "a", vec![]));
    assert!(merged.is_empty() && conflicts.is_empty());
}

fn route_one(c: &Catalog, e: &Event, settings: RouteSettings) -> Routed {
    let alerts = matching_alerts(c, e, None);
    assert_eq!(alerts.len(), 1, "expected exactly one matching alert");
    route(
        c,
        e,
        alerts[0],
        &settings,
        &crate::config::hooks::LogOnly,
        0,
    )
}

fn kinds(r: &Routed) -> String {
    match r {
        Routed::Job(j) => format!(
            "job {} {} {}",
            j.delivery.state, j.delivery.status_id, j.delivery.sha
        ),
        Routed::Failed { error, stage, .. } => format!("failed {stage:?}: {error}"),
        Routed::Skipped { reason, .. } => format!("skipped: {reason}"),
        Routed::NoCommit { .. } => "nocommit".into(),
    }
}

#[test]
fn notification_params_gates() {
    let g = "kustomize.toolkit.fluxcd.io";
    let rev = format!("main@sha1:{SHA}");
    let update = [
        (format!("{g}/commit_status"), "update".to_string()),
        (format!("{g}/revision"), rev.clone()),
    ];
    let update: Vec<(&str, &str)> = update
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let a = || {
        alert(
            "bar-ns",
            "a",
            vec![source("Kustomization", "*", Some("foo-ns"))],
        )
    };
    let c = catalog(
        vec![provider("bar-ns", "p", "github")],
        vec![a()],
        vec![secret("bar-ns")],
    );
    let s = RouteSettings::default();

    let r = route_one(&c, &event("foo-ns", "foo", "info", &update), s.clone());
    assert_eq!(
        kinds(&r),
        format!("job success kustomization/foo/0c9c2e41 {SHA}")
    );
    let r = route_one(
        &c,
        &event("foo-ns", "foo", "info", &update),
        RouteSettings {
            no_cross_namespace_refs: true,
            ..s.clone()
        },
    );
    assert!(kinds(&r).starts_with("failed Dispatch: discarding event, access denied to cross-namespace sources: alert 'bar-ns/a' can't process event from 'Kustomization/foo-ns/foo'"), "{}", kinds(&r));
    // No commit key, no commit_status, not an error: dropped for commit-status providers.
    let r = route_one(&c, &event("foo-ns", "foo", "", &[]), s.clone());
    assert_eq!(kinds(&r), "nocommit");
    // An error event passes the gate.
    let r = route_one(
        &c,
        &event(
            "foo-ns",
            "foo",
            "error",
            &[(&format!("{g}/revision"), &rev)],
        ),
        s.clone(),
    );
    assert_eq!(
        kinds(&r),
        format!("job failure kustomization/foo/0c9c2e41 {SHA}")
    );
    // The commit annotation passes it too, and wins over the revision.
    let other = "a1afe267b54f38b46b487f6e938a6fd508278c07";
    let r = route_one(
        &c,
        &event(
            "foo-ns",
            "foo",
            "info",
            &[
                ("event.toolkit.fluxcd.io/commit", other),
                (&format!("{g}/revision"), &rev),
            ],
        ),
        s.clone(),
    );
    assert_eq!(
        kinds(&r),
        format!("job success kustomization/foo/0c9c2e41 {other}")
    );
    // Missing revision: a send-stage failure with Flux's words.
    let r = route_one(&c, &event("foo-ns", "foo", "error", &[]), s.clone());
    assert_eq!(kinds(&r), "failed Send: missing revision metadata");

    // Provider absent.
    let c2 = catalog(vec![provider("other", "p", "github")], vec![a()], vec![]);
    let r = route_one(&c2, &event("foo-ns", "foo", "info", &update), s.clone());
    assert_eq!(
        kinds(&r),
        "failed Dispatch: failed to read provider: providers.notification.toolkit.fluxcd.io \"p\" not found"
    );
    // Suspended provider, even with its secret missing: silently skipped.
    let mut suspended = provider("bar-ns", "p", "github");
    suspended.spec.suspend = true;
    let c3 = catalog(vec![suspended], vec![a()], vec![]);
    assert_eq!(
        kinds(&route_one(
            &c3,
            &event("foo-ns", "foo", "info", &update),
            s.clone()
        )),
        "skipped: provider is suspended"
    );
    // Secret missing.
    let c4 = catalog(vec![provider("bar-ns", "p", "github")], vec![a()], vec![]);
    assert_eq!(
        kinds(&route_one(
            &c4,
            &event("foo-ns", "foo", "info", &update),
            s.clone()
        )),
        "failed Dispatch: failed to initialize notifier for provider 'p': failed to get secret 'bar-ns/tok': secrets \"tok\" not found"
    );
    // serviceAccountName without the feature gate.
    let mut sa = provider("bar-ns", "p", "github");
    sa.spec.service_account_name = Some("sa".into());
    let c5 = catalog(vec![sa], vec![a()], vec![secret("bar-ns")]);
    assert!(
        kinds(&route_one(
            &c5,
            &event("foo-ns", "foo", "info", &update),
            s.clone()
        ))
        .contains("ObjectLevelWorkloadIdentity")
    );
    // Not a commit-status provider: Flux's notification-controller handles it, not us.
    let c6 = catalog(vec![provider("bar-ns", "p", "slack")], vec![a()], vec![]);
    assert_eq!(
        kinds(&route_one(
            &c6,
            &event("foo-ns", "foo", "info", &update),
            s.clone()
        )),
        "skipped: provider type is not a commit-status type"
    );
}

#[test]
fn status_ids_and_progressing() {
    let g = "kustomize.toolkit.fluxcd.io";
    let rev = format!("main@sha1:{SHA}");
    let md = [
        (format!("{g}/commit_status"), "update".to_string()),
        (format!("{g}/revision"), rev),
        (format!("{g}/environment"), "production".to_string()),
    ];
    let md: Vec<(&str, &str)> = md.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let a = || alert("ns", "test-alert", vec![source("Kustomization", "*", None)]);
    let with_expr = |expr: &str| {
        let mut p = provider("ns", "p", "github");
        p.spec.commit_status_expr = Some(expr.into());
        catalog(vec![p], vec![a()], vec![secret("ns")])
    };
    let e = event("ns", "gitops-system", "info", &md);
    let s = RouteSettings::default();
    let c = with_expr(
        "event.involvedObject.kind + '/' + event.involvedObject.name + '/' + event.metadata.environment + '/' + provider.metadata.uid.split('-').first().value() + '/' + alert.metadata.name",
    );
    assert_eq!(
        kinds(&route_one(&c, &e, s.clone())),
        format!("job success Kustomization/gitops-system/production/0c9c2e41/test-alert {SHA}")
    );
    let c = with_expr("event.metadata.notfound");
    assert!(kinds(&route_one(&c, &e, s.clone())).starts_with("failed Dispatch: failed to create commit status: failed to evaluate the spec.commitStatusExpr CEL expression for the event: "));

    let mut helm = e.clone();
    helm.involved_object.kind = "HelmRelease".into();
    assert_eq!(
        default_status_id(&helm, UID),
        "helmrelease/gitops-system/0c9c2e41"
    );

    let c = catalog(
        vec![provider("ns", "p", "github")],
        vec![a()],
        vec![secret("ns")],
    );
    let mut progressing = e.clone();
    progressing.reason = "Progressing".into();
    assert_eq!(
        kinds(&route_one(&c, &progressing, s.clone())),
        format!("job pending kustomization/gitops-system/0c9c2e41 {SHA}")
    );
    let skip = RouteSettings {
        progressing: ProgressingMode::Skip,
        ..s
    };
    assert_eq!(
        kinds(&route_one(&c, &progressing, skip)),
        "skipped: progressing event"
    );
}

#[test]
fn target_url_and_description_templates() {
    let g = "kustomize.toolkit.fluxcd.io";
    let rev = format!("main@sha1:{SHA}");
    let md = [
        (format!("{g}/commit_status"), "update".to_string()),
        (format!("{g}/revision"), rev),
    ];
    let md: Vec<(&str, &str)> = md.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut p = provider("ns", "p", "github");
    p.metadata.annotations.insert(
        crate::config::status_expr::TARGET_URL_ANNOTATION.into(),
        "'https://grafana.example.com/d/flux?var-name=' + event.involvedObject.name".into(),
    );
    p.metadata.annotations.insert(
        crate::config::status_expr::DESCRIPTION_ANNOTATION.into(),
        "'prod-eu: ' + event.reason".into(),
    );
    let c = catalog(
        vec![p],
        vec![alert("ns", "a", vec![source("Kustomization", "*", None)])],
        vec![secret("ns")],
    );
    match route_one(
        &c,
        &event("ns", "podinfo", "info", &md),
        RouteSettings::default(),
    ) {
        Routed::Job(j) => {
            assert_eq!(
                j.delivery.target_url.as_deref(),
                Some("https://grafana.example.com/d/flux?var-name=podinfo")
            );
            assert_eq!(
                j.description_override.as_deref(),
                Some("prod-eu: ReconciliationSucceeded")
            );
            assert_eq!(j.delivery.description, "prod-eu: ReconciliationSucceeded");
        }
        other => panic!("{}", kinds(&other)),
    }
    let mut bad = provider("ns", "p", "github");
    bad.metadata.annotations.insert(
        crate::config::status_expr::TARGET_URL_ANNOTATION.into(),
        "'x' +".into(),
    );
    let errors = crate::config::status_expr::check_provider(&bad).unwrap_err();
    assert_eq!(
        errors[0].field,
        format!(
            "metadata.annotations[{}]",
            crate::config::status_expr::TARGET_URL_ANNOTATION
        )
    );
}
