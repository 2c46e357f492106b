//! The store's rules, exercised on real redb files in temporary data dirs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rouse_store::{
    Durability, EmbeddedStore, EventType, FLUSH_INTERVAL, FOREGROUND_FINALIZER, Kind, Propagation,
    Store, StoreError, Watch, WatchEvent,
};
use serde_json::{Value, json};

fn open() -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    (dir, store)
}

fn svc(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": [{"image": image}]}}},
    })
}

fn rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn generation(obj: &Value) -> i64 {
    obj["metadata"]["generation"].as_i64().unwrap()
}

fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap()
}

fn owned(name: &str, owner: &Value, owner_kind: Kind) -> Value {
    json!({
        "metadata": {
            "name": name,
            "ownerReferences": [{
                "apiVersion": owner_kind.api_version(),
                "kind": owner_kind.name(),
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
                "controller": true,
            }],
        },
        "spec": {},
    })
}

/// The next event, waiting at most `within`.
fn recv_within(rx: &mut Watch, within: Duration) -> Option<WatchEvent> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async { tokio::time::timeout(within, rx.recv()).await.ok().flatten() })
}

fn recv(rx: &mut Watch) -> WatchEvent {
    recv_within(rx, Duration::from_secs(10)).expect("an event within 10 s")
}

#[test]
fn create_stamps_bookkeeping_and_get_returns_it() {
    let (_d, s) = open();
    let mut o = svc("hello", "a");
    o["metadata"]["uid"] = json!("given-uid");
    o["metadata"]["resourceVersion"] = json!("999");
    o["metadata"]["generation"] = json!(7);
    o["status"] = json!({"observedGeneration": 3});
    let created = s.create(Kind::Service, o).unwrap();
    let m = &created["metadata"];
    assert_eq!(m["namespace"], "default");
    assert_eq!(m["generation"], 1);
    assert_eq!(m["resourceVersion"], "1");
    let uid = m["uid"].as_str().unwrap();
    assert_ne!(uid, "given-uid");
    assert_eq!(uid.len(), 36);
    assert!(m["creationTimestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(created["status"], json!({"observedGeneration": 3}));
    assert_eq!(s.get(Kind::Service, "default", "hello").unwrap(), created);
    assert_eq!(s.resource_version(), 1);

    // kind and apiVersion are filled in when absent.
    let r = s
        .create(
            Kind::Route,
            json!({"metadata": {"name": "r", "namespace": "ns"}}),
        )
        .unwrap();
    assert_eq!(r["kind"], "Route");
    assert_eq!(r["apiVersion"], "serving.knative.dev/v1");
    assert_eq!(rv(&r), 2);
    assert!(matches!(
        s.get(Kind::Route, "default", "r"),
        Err(StoreError::NotFound { .. })
    ));
    assert!(s.get(Kind::Route, "ns", "r").is_ok());
}

#[test]
fn create_refuses_taken_names_and_unusable_objects() {
    let (_d, s) = open();
    s.create(Kind::Service, svc("hello", "a")).unwrap();
    let err = s.create(Kind::Service, svc("hello", "b")).unwrap_err();
    assert_eq!(
        err,
        StoreError::AlreadyExists {
            kind: Kind::Service,
            namespace: "default".into(),
            name: "hello".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "services.serving.knative.dev \"hello\" already exists"
    );
    // Same name, other kind or namespace: fine.
    s.create(Kind::Configuration, json!({"metadata": {"name": "hello"}}))
        .unwrap();
    s.create(
        Kind::Service,
        json!({"metadata": {"name": "hello", "namespace": "other"}}),
    )
    .unwrap();

    for bad in [
        json!({"metadata": {}}),
        json!({"kind": "Route", "metadata": {"name": "x"}}),
        json!({"apiVersion": "v1", "metadata": {"name": "x"}}),
        json!("a string"),
        json!({"metadata": []}),
    ] {
        assert!(
            matches!(
                s.create(Kind::Service, bad.clone()),
                Err(StoreError::Invalid(_))
            ),
            "{bad} should be invalid"
        );
    }
    let (items, _) = s.list(Kind::Service, None).unwrap();
    assert_eq!(items.len(), 2);
}

#[test]
fn generate_name_appends_five_random_characters() {
    let (_d, s) = open();
    let mut names = std::collections::HashSet::new();
    for _ in 0..20 {
        let o = s
            .create(
                Kind::Revision,
                json!({"metadata": {"generateName": "hello-"}}),
            )
            .unwrap();
        let n = name(&o).to_string();
        let suffix = n.strip_prefix("hello-").unwrap();
        assert_eq!(suffix.len(), 5, "{n}");
        assert!(
            suffix
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert!(names.insert(n));
    }
    // A given name wins over generateName.
    let o = s
        .create(
            Kind::Revision,
            json!({"metadata": {"name": "fixed", "generateName": "hello-"}}),
        )
        .unwrap();
    assert_eq!(name(&o), "fixed");
}

#[test]
fn update_is_compare_and_swap_on_resource_version() {
    let (_d, s) = open();
    let v1 = s.create(Kind::Service, svc("hello", "a")).unwrap();

    let mut a = v1.clone();
    a["spec"]["template"]["spec"]["containers"][0]["image"] = json!("b");
    let v2 = s.update(Kind::Service, a).unwrap();
    assert_eq!(rv(&v2), rv(&v1) + 1);

    // A writer still holding v1 loses.
    let mut stale = v1.clone();
    stale["spec"]["template"]["spec"]["containers"][0]["image"] = json!("c");
    let err = s.update(Kind::Service, stale.clone()).unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "Operation cannot be fulfilled on services.serving.knative.dev \"hello\": the object has \
         been modified; please apply your changes to the latest version and try again"
    );
    assert_eq!(s.get(Kind::Service, "default", "hello").unwrap(), v2);
    assert!(matches!(
        s.update_status(Kind::Service, stale.clone()),
        Err(StoreError::Conflict { .. })
    ));

    // No resourceVersion: unconditional.
    stale["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    let v3 = s.update(Kind::Service, stale).unwrap();
    assert_eq!(
        v3["spec"]["template"]["spec"]["containers"][0]["image"],
        "c"
    );
    assert_eq!(rv(&v3), rv(&v2) + 1);

    // A uid that is not the stored object's is a conflict too (deleted and recreated).
    let mut other = v3.clone();
    other["metadata"]["uid"] = json!("not-the-uid");
    other["metadata"]["labels"] = json!({"x": "y"});
    assert!(matches!(
        s.update(Kind::Service, other),
        Err(StoreError::Conflict { .. })
    ));

    assert!(matches!(
        s.update(Kind::Service, svc("absent", "a")),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.update_status(Kind::Service, svc("absent", "a")),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn generation_moves_only_on_spec_change() {
    let (_d, s) = open();
    let v1 = s.create(Kind::Configuration, svc("c", "a")).unwrap_err();
    assert!(
        matches!(v1, StoreError::Invalid(_)),
        "Service kind on Configuration"
    );

    let v1 = s.create(Kind::Service, svc("hello", "a")).unwrap();
    assert_eq!(generation(&v1), 1);

    let mut labelled = v1.clone();
    labelled["metadata"]["labels"] = json!({"team": "x"});
    labelled["metadata"]["generation"] = json!(42); // ignored: the store owns it
    labelled["metadata"]["creationTimestamp"] = json!("1999-01-01T00:00:00Z"); // ignored
    let v2 = s.update(Kind::Service, labelled).unwrap();
    assert_eq!(generation(&v2), 1);
    assert_eq!(rv(&v2), rv(&v1) + 1);
    assert_eq!(v2["metadata"]["labels"]["team"], "x");
    assert_eq!(
        v2["metadata"]["creationTimestamp"],
        v1["metadata"]["creationTimestamp"]
    );
    assert_eq!(v2["metadata"]["uid"], v1["metadata"]["uid"]);

    let mut changed = v2.clone();
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("b");
    let v3 = s.update(Kind::Service, changed).unwrap();
    assert_eq!(generation(&v3), 2);

    let mut changed = v3.clone();
    changed.as_object_mut().unwrap().remove("spec");
    let v4 = s.update(Kind::Service, changed).unwrap();
    assert_eq!(generation(&v4), 3);
    assert!(v4.get("spec").is_none());

    let mut st = v4.clone();
    st["status"] = json!({"observedGeneration": 3});
    let v5 = s.update_status(Kind::Service, st).unwrap();
    assert_eq!(generation(&v5), 3);
    assert_eq!(rv(&v5), rv(&v4) + 1);
}

#[test]
fn status_is_written_apart_from_spec() {
    let (_d, s) = open();
    let mut o = svc("hello", "a");
    o["status"] = json!({"conditions": [{"type": "Ready", "status": "Unknown"}]});
    let v1 = s.create(Kind::Service, o).unwrap();

    // update ignores status: a spec change keeps the stored status.
    let mut u = v1.clone();
    u["spec"]["template"]["spec"]["containers"][0]["image"] = json!("b");
    u["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}]});
    let v2 = s.update(Kind::Service, u).unwrap();
    assert_eq!(v2["status"], v1["status"]);
    assert_eq!(
        v2["spec"]["template"]["spec"]["containers"][0]["image"],
        "b"
    );

    // update_status ignores everything but status.
    let mut st = v2.clone();
    st["spec"] = json!({"changed": true});
    st["metadata"]["labels"] = json!({"a": "b"});
    st["status"] = json!({"observedGeneration": 2});
    let v3 = s.update_status(Kind::Service, st).unwrap();
    assert_eq!(v3["spec"], v2["spec"]);
    assert!(v3["metadata"].get("labels").is_none());
    assert_eq!(v3["status"], json!({"observedGeneration": 2}));
    assert_eq!(generation(&v3), generation(&v2));
    assert_eq!(s.get(Kind::Service, "default", "hello").unwrap(), v3);

    // A status absent from the update_status object clears it.
    let mut clear = v3.clone();
    clear.as_object_mut().unwrap().remove("status");
    let v4 = s.update_status(Kind::Service, clear).unwrap();
    assert!(v4.get("status").is_none());
}

#[test]
fn unchanged_updates_write_nothing_and_emit_nothing() {
    let (_d, s) = open();
    let v1 = s.create(Kind::Service, svc("hello", "a")).unwrap();
    let mut w = s.watch(s.resource_version()).unwrap();

    // Same object, or only status changed (which update ignores), or stale status re-sent.
    assert_eq!(s.update(Kind::Service, v1.clone()).unwrap(), v1);
    let mut only_status = v1.clone();
    only_status["status"] = json!({"x": 1});
    assert_eq!(s.update(Kind::Service, only_status).unwrap(), v1);
    assert_eq!(s.update_status(Kind::Service, v1.clone()).unwrap(), v1);
    // Without resourceVersion and uid, still recognized as unchanged.
    let mut bare = v1.clone();
    let m = bare["metadata"].as_object_mut().unwrap();
    m.remove("resourceVersion");
    m.remove("uid");
    m.remove("creationTimestamp");
    m.remove("generation");
    assert_eq!(s.update(Kind::Service, bare).unwrap(), v1);
    assert_eq!(s.resource_version(), rv(&v1));

    // The first event the watcher sees is the next real change.
    let mut real = v1.clone();
    real["metadata"]["annotations"] = json!({"a": "b"});
    s.update(Kind::Service, real).unwrap();
    let ev = recv(&mut w);
    assert_eq!(ev.event_type, EventType::Modified);
    assert_eq!(ev.resource_version, rv(&v1) + 1);
    assert!(recv_within(&mut w, Duration::from_millis(50)).is_none());
}

#[test]
fn list_sorts_by_namespace_then_name_and_filters_by_namespace() {
    let (_d, s) = open();
    for (ns, n) in [("b", "z"), ("a", "y"), ("ab", "a"), ("a", "x"), ("b", "a")] {
        s.create(
            Kind::Route,
            json!({"metadata": {"name": n, "namespace": ns}}),
        )
        .unwrap();
    }
    s.create(Kind::Service, svc("not-a-route", "a")).unwrap();
    let (all, rv_all) = s.list(Kind::Route, None).unwrap();
    let keys: Vec<(String, String)> = all
        .iter()
        .map(|o| {
            (
                o["metadata"]["namespace"].as_str().unwrap().to_string(),
                name(o).to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [("a", "x"), ("a", "y"), ("ab", "a"), ("b", "a"), ("b", "z")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(keys, want);
    assert_eq!(rv_all, 6);

    let (a, _) = s.list(Kind::Route, Some("a")).unwrap();
    assert_eq!(a.iter().map(name).collect::<Vec<_>>(), ["x", "y"]);
    let (none, rv_none) = s.list(Kind::Route, Some("c")).unwrap();
    assert!(none.is_empty());
    assert_eq!(rv_none, 6);
    assert!(s.list(Kind::Revision, None).unwrap().0.is_empty());
}

#[test]
fn delete_cascades_through_three_levels_and_across_kinds() {
    let (_d, s) = open();
    let service = s.create(Kind::Service, svc("hello", "a")).unwrap();
    let config = s
        .create(Kind::Configuration, owned("hello", &service, Kind::Service))
        .unwrap();
    let route = s
        .create(Kind::Route, owned("hello", &service, Kind::Service))
        .unwrap();
    let rev1 = s
        .create(
            Kind::Revision,
            owned("hello-00001", &config, Kind::Configuration),
        )
        .unwrap();
    let rev2 = s
        .create(
            Kind::Revision,
            owned("hello-00002", &config, Kind::Configuration),
        )
        .unwrap();
    s.create(
        Kind::PodAutoscaler,
        owned("hello-00001", &rev1, Kind::Revision),
    )
    .unwrap();
    s.create(
        Kind::ServerlessService,
        owned("hello-00002", &rev2, Kind::Revision),
    )
    .unwrap();
    // Bystanders: another service's tree, and an object with an unrelated owner.
    let other = s.create(Kind::Service, svc("other", "a")).unwrap();
    s.create(Kind::Configuration, owned("other", &other, Kind::Service))
        .unwrap();
    s.create(
        Kind::Revision,
        owned(
            "orphan-00001",
            &json!({"metadata": {"name": "gone", "uid": "x"}}),
            Kind::Configuration,
        ),
    )
    .unwrap();

    let before = s.resource_version();
    let mut w = s.watch(before).unwrap();
    let deleted = s.delete(Kind::Service, "default", "hello").unwrap();
    assert_eq!(name(&deleted), "hello");
    assert_eq!(deleted["metadata"]["uid"], service["metadata"]["uid"]);
    assert_eq!(rv(&deleted), before + 1);

    // One Deleted event per object, each with its own resourceVersion, owners first.
    let mut events = Vec::new();
    for _ in 0..7 {
        events.push(recv(&mut w));
    }
    assert!(recv_within(&mut w, Duration::from_millis(50)).is_none());
    for (i, ev) in events.iter().enumerate() {
        assert_eq!(ev.event_type, EventType::Deleted);
        assert_eq!(ev.resource_version, before + 1 + i as u64);
        assert_eq!(rv(&ev.object), ev.resource_version);
    }
    let got: Vec<(Kind, &str)> = events.iter().map(|e| (e.kind, name(&e.object))).collect();
    assert_eq!(got[0], (Kind::Service, "hello"));
    let pos = |k: Kind, n: &str| got.iter().position(|g| *g == (k, n)).unwrap();
    assert!(pos(Kind::Configuration, "hello") < pos(Kind::Revision, "hello-00001"));
    assert!(pos(Kind::Revision, "hello-00001") < pos(Kind::PodAutoscaler, "hello-00001"));
    assert!(pos(Kind::Revision, "hello-00002") < pos(Kind::ServerlessService, "hello-00002"));
    pos(Kind::Route, "hello");
    assert_eq!(s.resource_version(), before + 7);

    for kind in [Kind::Service, Kind::Configuration, Kind::Route] {
        assert!(matches!(
            s.get(kind, "default", "hello"),
            Err(StoreError::NotFound { .. })
        ));
    }
    assert!(s.list(Kind::PodAutoscaler, None).unwrap().0.is_empty());
    assert!(s.list(Kind::ServerlessService, None).unwrap().0.is_empty());
    let (revs, _) = s.list(Kind::Revision, None).unwrap();
    assert_eq!(revs.iter().map(name).collect::<Vec<_>>(), ["orphan-00001"]);
    assert!(s.get(Kind::Service, "default", "other").is_ok());
    assert!(s.get(Kind::Configuration, "default", "other").is_ok());
    let _ = route;

    let err = s.delete(Kind::Service, "default", "hello").unwrap_err();
    assert_eq!(
        err.to_string(),
        "services.serving.knative.dev \"hello\" not found"
    );
}

fn with_finalizers(mut obj: Value, finalizers: &[&str]) -> Value {
    obj["metadata"]["finalizers"] = json!(finalizers);
    obj
}

fn exists(s: &EmbeddedStore, kind: Kind, name: &str) -> bool {
    s.get(kind, "default", name).is_ok()
}

#[test]
fn finalizers_hold_a_deleted_object_until_an_update_clears_them() {
    let (_d, s) = open();
    let service = s
        .create(
            Kind::Service,
            with_finalizers(svc("held", "a"), &["example.com/a", "example.com/b"]),
        )
        .unwrap();
    s.create(Kind::Configuration, owned("held", &service, Kind::Service))
        .unwrap();
    let mut w = s.watch(s.resource_version()).unwrap();

    // Marked, not removed; what it owns stays while it does.
    let marked = s.delete(Kind::Service, "default", "held").unwrap();
    let stamp = marked["metadata"]["deletionTimestamp"].clone();
    assert!(stamp.is_string(), "{marked}");
    assert_eq!(recv(&mut w).event_type, EventType::Modified);
    assert!(exists(&s, Kind::Configuration, "held"));
    // Deleting again changes nothing.
    let again = s.delete(Kind::Service, "default", "held").unwrap();
    assert_eq!(again["metadata"]["deletionTimestamp"], stamp);
    assert!(recv_within(&mut w, Duration::from_millis(50)).is_none());

    // An update can neither unset the mark nor add a finalizer.
    let mut cleared = marked.clone();
    cleared["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("deletionTimestamp");
    cleared["metadata"]["labels"] = json!({"x": "y"});
    let updated = s.update(Kind::Service, cleared).unwrap();
    assert_eq!(updated["metadata"]["deletionTimestamp"], stamp);
    let added = with_finalizers(updated.clone(), &["example.com/a", "example.com/b", "new"]);
    let err = s.update(Kind::Service, added).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("metadata.finalizers: Forbidden: no new finalizers"),
        "{err}"
    );

    // Clearing one keeps it; clearing the last removes it and cascades.
    let one = s
        .update(Kind::Service, with_finalizers(updated, &["example.com/b"]))
        .unwrap();
    assert!(exists(&s, Kind::Service, "held"));
    let mut w = s.watch(s.resource_version()).unwrap();
    s.update(Kind::Service, with_finalizers(one, &[])).unwrap();
    assert!(!exists(&s, Kind::Service, "held"));
    assert!(!exists(&s, Kind::Configuration, "held"));
    let kinds: Vec<(EventType, Kind)> = (0..3)
        .map(|_| recv(&mut w))
        .map(|e| (e.event_type, e.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            (EventType::Modified, Kind::Service),
            (EventType::Deleted, Kind::Service),
            (EventType::Deleted, Kind::Configuration)
        ]
    );

    // A new object never starts out marked.
    let fresh = s
        .create(
            Kind::Service,
            json!({"metadata": {"name": "fresh", "deletionTimestamp": "2020-01-01T00:00:00Z"}, "spec": {}}),
        )
        .unwrap();
    assert!(fresh["metadata"].get("deletionTimestamp").is_none());
}

#[test]
fn background_cascade_marks_dependents_with_finalizers() {
    let (_d, s) = open();
    let service = s.create(Kind::Service, svc("bg", "a")).unwrap();
    let config = s
        .create(
            Kind::Configuration,
            with_finalizers(owned("bg", &service, Kind::Service), &["hold"]),
        )
        .unwrap();
    s.create(
        Kind::Revision,
        owned("bg-00001", &config, Kind::Configuration),
    )
    .unwrap();
    s.delete(Kind::Service, "default", "bg").unwrap();
    assert!(!exists(&s, Kind::Service, "bg"));
    let held = s.get(Kind::Configuration, "default", "bg").unwrap();
    assert!(held["metadata"]["deletionTimestamp"].is_string());
    assert!(exists(&s, Kind::Revision, "bg-00001"));
    s.update(Kind::Configuration, with_finalizers(held, &[]))
        .unwrap();
    assert!(!exists(&s, Kind::Configuration, "bg"));
    assert!(!exists(&s, Kind::Revision, "bg-00001"));
}

#[test]
fn orphan_keeps_dependents_without_the_owner_reference() {
    let (_d, s) = open();
    let service = s.create(Kind::Service, svc("or", "a")).unwrap();
    s.create(Kind::Configuration, owned("or", &service, Kind::Service))
        .unwrap();
    s.create(Kind::Route, owned("or", &service, Kind::Service))
        .unwrap();
    s.delete_propagating(Kind::Service, "default", "or", Propagation::Orphan)
        .unwrap();
    assert!(!exists(&s, Kind::Service, "or"));
    for kind in [Kind::Configuration, Kind::Route] {
        let kept = s.get(kind, "default", "or").unwrap();
        assert!(kept["metadata"].get("ownerReferences").is_none(), "{kept}");
    }
}

#[test]
fn foreground_deletes_dependents_first_and_waits_for_held_ones() {
    let (_d, s) = open();
    // Nothing held: dependents go before the owner, all at once.
    let service = s.create(Kind::Service, svc("fg", "a")).unwrap();
    s.create(Kind::Configuration, owned("fg", &service, Kind::Service))
        .unwrap();
    let mut w = s.watch(s.resource_version()).unwrap();
    s.delete_propagating(Kind::Service, "default", "fg", Propagation::Foreground)
        .unwrap();
    assert_eq!(recv(&mut w).kind, Kind::Configuration);
    assert_eq!(recv(&mut w).kind, Kind::Service);

    // A dependent held by a finalizer keeps the owner, marked with foregroundDeletion, until
    // it goes.
    let service = s.create(Kind::Service, svc("fg2", "a")).unwrap();
    let config = s
        .create(
            Kind::Configuration,
            with_finalizers(owned("fg2", &service, Kind::Service), &["hold"]),
        )
        .unwrap();
    s.create(Kind::Route, owned("fg2", &service, Kind::Service))
        .unwrap();
    let owner = s
        .delete_propagating(Kind::Service, "default", "fg2", Propagation::Foreground)
        .unwrap();
    assert_eq!(
        owner["metadata"]["finalizers"],
        json!([FOREGROUND_FINALIZER])
    );
    assert!(!exists(&s, Kind::Route, "fg2"));
    let held = s.get(Kind::Configuration, "default", "fg2").unwrap();
    assert!(held["metadata"]["deletionTimestamp"].is_string());
    let _ = config;
    s.update(Kind::Configuration, with_finalizers(held, &[]))
        .unwrap();
    assert!(!exists(&s, Kind::Configuration, "fg2"));
    assert!(!exists(&s, Kind::Service, "fg2"));
}

#[test]
fn delete_survives_ownership_cycles() {
    let (_d, s) = open();
    let a = s.create(Kind::Service, svc("a", "x")).unwrap();
    let b = s
        .create(Kind::Configuration, owned("b", &a, Kind::Service))
        .unwrap();
    // Make a owned by b: a cycle.
    let mut a2 = a.clone();
    a2["metadata"]["ownerReferences"] =
        owned("a", &b, Kind::Configuration)["metadata"]["ownerReferences"].clone();
    s.update(Kind::Service, a2).unwrap();
    let before = s.resource_version();
    s.delete(Kind::Configuration, "default", "b").unwrap();
    assert_eq!(s.resource_version(), before + 2);
    assert!(s.list(Kind::Service, None).unwrap().0.is_empty());
}

#[test]
fn watch_replays_then_streams_live() {
    let (_d, s) = open();
    let a = s.create(Kind::Service, svc("a", "1")).unwrap();
    let mut a2 = a.clone();
    a2["spec"] = json!({"x": 1});
    s.update(Kind::Service, a2).unwrap();
    s.create(Kind::Route, json!({"metadata": {"name": "r"}}))
        .unwrap();

    let mut all = s.watch(0).unwrap();
    let mut from2 = s.watch(2).unwrap();
    let e1 = recv(&mut all);
    assert_eq!(
        (e1.event_type, e1.kind, e1.resource_version),
        (EventType::Added, Kind::Service, 1)
    );
    assert_eq!(e1.object, a);
    assert_eq!(recv(&mut all).event_type, EventType::Modified);
    let e3 = recv(&mut all);
    assert_eq!(
        (e3.event_type, e3.kind, e3.resource_version),
        (EventType::Added, Kind::Route, 3)
    );
    assert_eq!(recv(&mut from2), e3);

    s.delete(Kind::Route, "default", "r").unwrap();
    let live = recv(&mut all);
    assert_eq!(
        (live.event_type, live.resource_version),
        (EventType::Deleted, 4)
    );
    assert_eq!(recv(&mut from2), live);

    // A dropped watcher does not stop the others.
    drop(from2);
    s.create(Kind::Route, json!({"metadata": {"name": "r2"}}))
        .unwrap();
    assert_eq!(recv(&mut all).resource_version, 5);

    // From the future: refused.
    assert!(matches!(s.watch(6), Err(StoreError::Invalid(_))));
}

#[test]
fn watch_from_before_the_retained_history_is_expired() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = EmbeddedStore::open_with_history(dir.path(), 3).unwrap();
        for i in 0..5 {
            s.create(Kind::Route, json!({"metadata": {"name": format!("r{i}")}}))
                .unwrap();
        }
        // Events 3, 4, 5 are retained: watching from 2 or later works.
        assert_eq!(
            s.watch(1).unwrap_err(),
            StoreError::Expired {
                requested: 1,
                oldest: 2
            }
        );
        assert!(matches!(s.watch(0), Err(StoreError::Expired { .. })));
        let mut w = s.watch(2).unwrap();
        let rvs: Vec<u64> = (0..3).map(|_| recv(&mut w).resource_version).collect();
        assert_eq!(rvs, [3, 4, 5]);
    }
    // After a restart nothing is retained, but the current version is always fine.
    let s = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(s.resource_version(), 5);
    assert_eq!(
        s.watch(4).unwrap_err(),
        StoreError::Expired {
            requested: 4,
            oldest: 5
        }
    );
    let (items, rv) = s.list(Kind::Route, None).unwrap();
    assert_eq!((items.len(), rv), (5, 5));
    let mut w = s.watch(rv).unwrap();
    assert!(recv_within(&mut w, Duration::from_millis(20)).is_none());
    s.create(Kind::Route, json!({"metadata": {"name": "r5"}}))
        .unwrap();
    assert_eq!(recv(&mut w).resource_version, 6);
}

#[test]
fn state_and_resource_version_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let stored = {
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let v = s.create(Kind::Service, svc("hello", "a")).unwrap();
        s.create(Kind::Route, json!({"metadata": {"name": "gone"}}))
            .unwrap();
        s.delete(Kind::Route, "default", "gone").unwrap();
        v
    };
    let s = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(s.get(Kind::Service, "default", "hello").unwrap(), stored);
    assert_eq!(s.resource_version(), 3);
    let next = s
        .create(Kind::Route, json!({"metadata": {"name": "next"}}))
        .unwrap();
    assert_eq!(rv(&next), 4);
}

#[test]
fn relaxed_writes_follow_the_same_rules_and_reach_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (stored, status) = {
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let mut w = s.watch(0).unwrap();
        let created = s
            .create_with(Kind::Service, svc("hello", "a"), Durability::Relaxed)
            .unwrap();
        assert_eq!(rv(&created), 1);
        // Visible at once, to reads and watches.
        assert_eq!(s.get(Kind::Service, "default", "hello").unwrap(), created);
        assert_eq!(recv(&mut w).event_type, EventType::Added);
        // Compare-and-swap and no-op rules hold as for durable writes.
        let mut stale = created.clone();
        stale["metadata"]["resourceVersion"] = json!("7");
        stale["status"] = json!({"x": 1});
        assert!(matches!(
            s.update_status_with(Kind::Service, stale, Durability::Relaxed),
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(
            s.update_with(Kind::Service, created.clone(), Durability::Relaxed)
                .unwrap(),
            created
        );
        let mut next = created.clone();
        next["status"] = json!({"x": 1});
        let status = s
            .update_status_with(Kind::Service, next, Durability::Relaxed)
            .unwrap();
        assert_eq!(rv(&status), 2);
        assert_eq!(recv(&mut w).event_type, EventType::Modified);
        assert!(recv_within(&mut w, Duration::from_millis(20)).is_none());
        // The flusher puts them on disk by itself, soon after.
        let deadline = std::time::Instant::now() + FLUSH_INTERVAL * 50;
        while !s.is_flushed() {
            assert!(std::time::Instant::now() < deadline, "never flushed");
            std::thread::sleep(Duration::from_millis(5));
        }
        let more = s
            .create_with(
                Kind::Route,
                json!({"metadata": {"name": "r"}}),
                Durability::Relaxed,
            )
            .unwrap();
        s.flush().unwrap();
        assert!(s.is_flushed());
        (more, status)
    };
    // A clean close keeps everything and versions continue without a gap.
    let s = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(s.get(Kind::Service, "default", "hello").unwrap(), status);
    assert_eq!(s.get(Kind::Route, "default", "r").unwrap(), stored);
    assert_eq!(s.resource_version(), 3);
    let durable = s
        .create(Kind::Route, json!({"metadata": {"name": "d"}}))
        .unwrap();
    assert_eq!(rv(&durable), 4);
    assert!(s.is_flushed());
}

#[test]
fn a_data_dir_opens_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nested").join(".rouse");
    let first = EmbeddedStore::open(&data).unwrap();
    let err = EmbeddedStore::open(&data).unwrap_err();
    assert_eq!(
        err,
        StoreError::Backend(format!(
            "data dir {} is in use by another rouse",
            data.display()
        ))
    );
    drop(first);
    EmbeddedStore::open(&data).unwrap();
}

/// Lists and watches from the list's version while writers run: the list plus the events
/// must replay to exactly the final state, with every version seen once, in order.
#[test]
fn list_then_watch_misses_and_repeats_nothing_under_concurrent_writers() {
    let (_d, s) = open();
    let s: Arc<dyn Store> = Arc::new(s);
    const WRITERS: usize = 3;
    const WRITES: usize = 30;

    type Observer = (Vec<Value>, u64, Watch);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut observers: Vec<Observer> = Vec::new();
                for i in 0..WRITES {
                    // Observers start at different moments during the writes.
                    if w < 2 && i % 6 == w * 3 {
                        let (items, from) = s.list(Kind::Revision, None).unwrap();
                        let rx = s.watch(from).unwrap();
                        observers.push((items, from, rx));
                    }
                    // One writer per name, so no write here can lose a compare-and-swap.
                    let n = format!("w{w}-{}", i % 7);
                    match s.get(Kind::Revision, "default", &n) {
                        Ok(mut o) if i % 3 == 0 => {
                            o["spec"] = json!({"i": i});
                            s.update(Kind::Revision, o).unwrap();
                        }
                        Ok(_) if i % 3 == 1 => {
                            s.delete(Kind::Revision, "default", &n).unwrap();
                        }
                        Ok(mut o) => {
                            o["status"] = json!({"i": i});
                            s.update_status(Kind::Revision, o).unwrap();
                        }
                        Err(StoreError::NotFound { .. }) => {
                            s.create(
                                Kind::Revision,
                                json!({"metadata": {"name": n}, "spec": {"i": i}}),
                            )
                            .unwrap();
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                observers
            })
        })
        .collect();
    let observers: Vec<Observer> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert_eq!(observers.len(), 10);
    let (final_items, final_rv) = s.list(Kind::Revision, None).unwrap();
    let key = |o: &Value| name(o).to_string();
    let want: BTreeMap<String, Value> = final_items.iter().map(|o| (key(o), o.clone())).collect();

    for (items, from, mut rx) in observers {
        let mut state: BTreeMap<String, Value> =
            items.iter().map(|o| (key(o), o.clone())).collect();
        let mut at = from;
        while at < final_rv {
            let ev = recv(&mut rx);
            assert_eq!(ev.resource_version, at + 1, "gap or repeat after {at}");
            at = ev.resource_version;
            match ev.event_type {
                EventType::Added | EventType::Modified => {
                    state.insert(key(&ev.object), ev.object);
                }
                EventType::Deleted => {
                    assert!(state.remove(&key(&ev.object)).is_some());
                }
            }
        }
        assert_eq!(state, want, "observer from {from}");
        assert!(recv_within(&mut rx, Duration::from_millis(20)).is_none());
    }
}
