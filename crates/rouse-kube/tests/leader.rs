//! Leader election on a Lease against the scripted API server: acquiring a missing Lease,
//! renewing one's own, following a live holder, taking over an expired Lease, losing races,
//! and a leader stepping down when it cannot renew.

mod common;

use std::time::Duration;

use common::{serve, status, step};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rouse_kube::leader::{Attempt, LeaseConfig, LeaseLock, elect};
use serde_json::{Value, json};

const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/knative-serving/leases/rouse-controller";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/knative-serving/leases";

fn lease(holder: &str, renewed: Timestamp, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "rouse-controller", "namespace": "knative-serving", "resourceVersion": "10"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "acquireTime": renewed.to_string(),
            "renewTime": renewed.to_string(),
            "leaseTransitions": transitions,
        },
    })
}

/// A MicroTime field as a timestamp (the wire form carries microseconds).
fn ts(v: &Value) -> Timestamp {
    v.as_str().unwrap().parse().unwrap()
}

fn not_found() -> Value {
    status(
        404,
        "NotFound",
        "leases.coordination.k8s.io \"rouse-controller\" not found",
    )
}

fn lock(client: kube::Client) -> LeaseLock {
    LeaseLock::new(
        client,
        LeaseConfig::new("knative-serving", "rouse-controller", "pod-a"),
    )
}

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

#[tokio::test]
async fn a_missing_lease_is_created_and_held() {
    let now = at(0);
    let s = serve(vec![
        step("GET", LEASE, 404, not_found()),
        step("POST", LEASES, 201, lease("pod-a", now, 0)),
    ])
    .await;
    assert_eq!(
        lock(s.client.clone())
            .try_acquire_or_renew(now)
            .await
            .unwrap(),
        Attempt::Leader
    );
    let body = &s.seen()[1].2;
    assert_eq!(body["spec"]["holderIdentity"], "pod-a");
    assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(body["spec"]["leaseTransitions"], 0);
    s.assert_done();
}

#[tokio::test]
async fn the_holder_renews_and_a_live_lease_is_followed() {
    let s = serve(vec![
        step("GET", LEASE, 200, lease("pod-a", at(0), 3)),
        step("PUT", LEASE, 200, lease("pod-a", at(5), 3)),
        step("GET", LEASE, 200, lease("pod-b", at(0), 4)),
    ])
    .await;
    let l = lock(s.client.clone());
    assert_eq!(
        l.try_acquire_or_renew(at(5)).await.unwrap(),
        Attempt::Leader
    );
    let renewed = &s.seen()[1].2;
    assert_eq!(ts(&renewed["spec"]["renewTime"]), at(5));
    assert_eq!(
        ts(&renewed["spec"]["acquireTime"]),
        at(0),
        "a renewal keeps acquireTime"
    );
    assert_eq!(renewed["spec"]["leaseTransitions"], 3);
    assert_eq!(
        renewed["metadata"]["resourceVersion"], "10",
        "the write is a compare-and-swap"
    );
    // pod-b renewed 14 s ago with a 15 s lease: still live, no write.
    assert_eq!(
        l.try_acquire_or_renew(at(14)).await.unwrap(),
        Attempt::Follower {
            holder: "pod-b".into()
        }
    );
    s.assert_done();
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_races_are_lost_cleanly() {
    let s = serve(vec![
        step("GET", LEASE, 200, lease("pod-b", at(0), 4)),
        step("PUT", LEASE, 200, lease("pod-a", at(16), 5)),
        // Two candidates race for an expired Lease; the other one's write landed first.
        step("GET", LEASE, 200, lease("pod-b", at(0), 4)),
        step(
            "PUT",
            LEASE,
            409,
            status(409, "Conflict", "the object has been modified"),
        ),
        // Both race to create it.
        step("GET", LEASE, 404, not_found()),
        step(
            "POST",
            LEASES,
            409,
            status(409, "AlreadyExists", "already exists"),
        ),
    ])
    .await;
    let l = lock(s.client.clone());
    assert_eq!(
        l.try_acquire_or_renew(at(16)).await.unwrap(),
        Attempt::Leader
    );
    let took = &s.seen()[1].2;
    assert_eq!(took["spec"]["holderIdentity"], "pod-a");
    assert_eq!(took["spec"]["leaseTransitions"], 5);
    assert_eq!(ts(&took["spec"]["acquireTime"]), at(16));
    assert_eq!(
        l.try_acquire_or_renew(at(16)).await.unwrap(),
        Attempt::Follower {
            holder: "pod-b".into()
        }
    );
    assert!(matches!(
        l.try_acquire_or_renew(at(16)).await.unwrap(),
        Attempt::Follower { .. }
    ));
    s.assert_done();
}

/// Polls `rx` until it reads `want`, for at most `bound`.
async fn wait_for(
    rx: &mut tokio::sync::watch::Receiver<bool>,
    want: bool,
    bound: Duration,
) -> bool {
    tokio::time::timeout(bound, rx.wait_for(|v| *v == want))
        .await
        .is_ok_and(|r| r.is_ok())
}

#[tokio::test]
async fn a_leader_that_cannot_renew_steps_down_and_errors_never_end_the_election() {
    let now = Timestamp::now();
    let renewed = now.checked_add(SignedDuration::from_secs(1)).unwrap();
    // Acquire, renew once, then the API server fails every request (the script's end).
    let s = serve(vec![
        step("GET", LEASE, 404, not_found()),
        step("POST", LEASES, 201, lease("pod-a", now, 0)),
        step("GET", LEASE, 200, lease("pod-a", now, 0)),
        step("PUT", LEASE, 200, lease("pod-a", renewed, 0)),
    ])
    .await;
    let mut cfg = LeaseConfig::new("knative-serving", "rouse-controller", "pod-a");
    cfg.retry_period = Duration::from_millis(50);
    cfg.renew_deadline = Duration::from_millis(400);
    cfg.lease_duration = Duration::from_secs(1);
    // Taken before the election starts: every renewal, the last good one included, is later.
    let started = std::time::Instant::now();
    let mut leading = elect(LeaseLock::new(s.client.clone(), cfg));
    assert!(
        wait_for(&mut leading, true, Duration::from_secs(10)).await,
        "never led"
    );
    assert!(
        wait_for(&mut leading, false, Duration::from_secs(10)).await,
        "never stepped down"
    );
    // Failures within the renew deadline are tolerated: the step-down comes after it.
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    // It kept trying after the failures.
    let tries_then = s.seen().len();
    assert!(tries_then > 4, "{tries_then}");
    let bound = std::time::Instant::now() + Duration::from_secs(10);
    while s.seen().len() == tries_then {
        assert!(
            std::time::Instant::now() < bound,
            "the election stopped trying"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.assert_done();
}
