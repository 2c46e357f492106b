//! The revision's timeouts through real sockets (Knative's timeout conformance cases).

mod common;

use std::time::Duration;

use common::{App, BOUND, client, fetch, get, partial, wait_ready, wait_until};
use http::StatusCode;
use rouse_http::TIMEOUT_BODY;
use rouse_queue::{QueueConfig, QueueProxy};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn queue(app: &App, cfg: impl FnOnce(&mut QueueConfig)) -> QueueProxy {
    let mut c = QueueConfig::new(app.addr, "default", "slow-00001");
    cfg(&mut c);
    let qp = QueueProxy::start(c).await.unwrap();
    wait_ready(&qp).await;
    qp
}

async fn stream(qp: &QueueProxy, path: &str) -> (StatusCode, String, bool) {
    let resp = tokio::time::timeout(BOUND, client().request(get(qp.addr(), path)))
        .await
        .expect("response head in time")
        .unwrap();
    tokio::time::timeout(BOUND, partial(resp))
        .await
        .expect("body ended or was cut in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_timeout() {
    let app = App::start().await;
    let qp = queue(&app, |c| c.timeout = Some(ms(800))).await;
    // In time.
    assert_eq!(
        fetch(qp.addr(), "/sleep?ms=10").await,
        (StatusCode::OK, "slept".to_string())
    );
    // Too slow, nothing sent yet: 504.
    let started = tokio::time::Instant::now();
    let (status, body) = fetch(qp.addr(), "/sleep?ms=20000").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body.trim(), TIMEOUT_BODY);
    assert!(started.elapsed() < ms(10_000));
    wait_until("the app request cancelled", || app.current() == 0).await;

    // First byte in time, then a body past the total: the status stays, the body is cut.
    let (status, body, complete) = stream(&qp, "/drip?n=50&every=100").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!complete, "the body must be cut off, got {body:?}");
    assert!(body.starts_with("0\n"), "{body:?}");
    assert!(!body.contains("49\n"), "{body:?}");

    // A stream that ends within the total is whole.
    let (status, body, complete) = stream(&qp, "/drip?n=3&every=10").await;
    assert_eq!(
        (status, body.as_str(), complete),
        (StatusCode::OK, "0\n1\n2\n", true)
    );
    wait_until("nothing in flight", || qp.in_flight() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_start_timeout_applies_only_before_the_head() {
    let app = App::start().await;
    let qp = queue(&app, |c| {
        c.timeout = Some(ms(20_000));
        c.response_start_timeout = Some(ms(300));
    })
    .await;
    let (status, body) = fetch(qp.addr(), "/sleep?ms=20000").await;
    assert_eq!(
        (status, body.trim()),
        (StatusCode::GATEWAY_TIMEOUT, TIMEOUT_BODY)
    );
    // The head comes at once; the body takes longer than the response-start timeout.
    let (status, body, complete) = stream(&qp, "/drip?n=4&every=200").await;
    assert_eq!(
        (status, body.as_str(), complete),
        (StatusCode::OK, "0\n1\n2\n3\n", true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_resets_on_each_chunk() {
    let app = App::start().await;
    let qp = queue(&app, |c| {
        c.timeout = Some(ms(20_000));
        c.idle_timeout = Some(ms(500));
    })
    .await;
    // Silent before the head: 504.
    let (status, body) = fetch(qp.addr(), "/sleep?ms=20000").await;
    assert_eq!(
        (status, body.trim()),
        (StatusCode::GATEWAY_TIMEOUT, TIMEOUT_BODY)
    );
    // Chunks more often than the idle timeout, 1 s in all: whole.
    let (status, body, complete) = stream(&qp, "/drip?n=11&every=100").await;
    assert_eq!((status, complete), (StatusCode::OK, true), "{body:?}");
    assert!(body.ends_with("10\n"), "{body:?}");
    // A gap longer than the idle timeout after the first chunk: cut.
    let (status, body, complete) = stream(&qp, "/drip?n=2&every=5000").await;
    assert_eq!(
        (status, body.as_str(), complete),
        (StatusCode::OK, "0\n", false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_spent_queued_counts_toward_the_timeout() {
    let app = App::start().await;
    let qp = queue(&app, |c| {
        c.container_concurrency = 1;
        c.timeout = Some(ms(1000));
    })
    .await;
    let addr = qp.addr();
    // A takes 700 ms of its 1 s. B arrives just after it and would take 700 ms too: counted
    // from its arrival that ends past its 1 s, so B gets 504; counted from when it left the
    // queue it would have been in time.
    let first = tokio::spawn(async move { fetch(addr, "/sleep?ms=700").await });
    wait_until("the first request in the app", || app.current() == 1).await;
    let second = tokio::spawn(async move { fetch(addr, "/sleep?ms=700").await });
    wait_until("the second request queued", || qp.queued() == 1).await;
    assert_eq!(first.await.unwrap(), (StatusCode::OK, "slept".to_string()));
    let (status, body) = second.await.unwrap();
    assert_eq!(
        (status, body.trim()),
        (StatusCode::GATEWAY_TIMEOUT, TIMEOUT_BODY)
    );

    // A request that times out while still queued never reaches the app.
    let qp = queue(&app, |c| {
        c.container_concurrency = 1;
        c.timeout = Some(ms(20_000));
        c.response_start_timeout = Some(ms(1500));
    })
    .await;
    let addr = qp.addr();
    // The holder's head is out (so no response-start timer), its body streams for minutes.
    let holder = client()
        .request(get(addr, "/drip?n=2&every=60000"))
        .await
        .unwrap();
    assert_eq!(holder.status(), StatusCode::OK);
    let seen = app.seen();
    let (status, body) = fetch(addr, "/").await;
    assert_eq!(
        (status, body.trim()),
        (StatusCode::GATEWAY_TIMEOUT, TIMEOUT_BODY)
    );
    assert_eq!(qp.queued(), 0);
    assert_eq!(app.seen(), seen, "the timed-out request reached the app");
    // The holder hangs up: its slot is free again.
    drop(holder);
    wait_until("the holder gone", || qp.in_flight() == 0).await;
    assert_eq!(fetch(addr, "/").await.0, StatusCode::OK);
}
