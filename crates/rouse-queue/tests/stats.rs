//! The load report through real sockets. (The averaging arithmetic is tested on a paused
//! clock in the crate; here the levels are held constant so the averages are exact.)

mod common;

use common::{App, client, fetch, get, wait_ready, wait_until};
use http::{Request, StatusCode};
use rouse_http::full;
use rouse_http::{PROXY_ACTIVATOR, PROXY_HEADER};
use rouse_queue::{QueueConfig, QueueProxy};
use tokio::task::JoinSet;

fn proxied(addr: std::net::SocketAddr, path: &str) -> Request<rouse_http::Body> {
    Request::get(format!("http://{addr}{path}"))
        .header(PROXY_HEADER, PROXY_ACTIVATOR)
        .body(full(""))
        .unwrap()
}

/// Equal up to floating-point rounding (Σ level × dt / Σ dt).
fn assert_close(got: f64, want: f64) {
    assert!((got - want).abs() < 1e-9, "got {got}, want {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_levels_counts_and_proxied_load_apart() {
    let app = App::start().await;
    let qp = QueueProxy::start(QueueConfig {
        container_concurrency: 2,
        ..QueueConfig::new(app.addr, "default", "stats-00001")
    })
    .await
    .unwrap();
    wait_ready(&qp).await;
    let addr = qp.addr();

    // Two direct and one proxied request held: two in the app, one queued. Queued requests
    // are load too.
    let mut held = JoinSet::new();
    for _ in 0..2 {
        held.spawn(async move { fetch(addr, "/hold").await.0 });
    }
    held.spawn(async move {
        client()
            .request(proxied(addr, "/hold"))
            .await
            .unwrap()
            .status()
    });
    wait_until("3 in flight", || qp.in_flight() == 3).await;
    let first = qp.take_stats();
    assert_eq!(first.request_count, 3.0);
    assert_eq!(first.proxied_request_count, 1.0);
    assert!(first.average_concurrency > 0.0 && first.average_concurrency <= 3.0);
    assert!(first.process_uptime > 0.0);

    // A whole period at a constant level averages exactly that level. Probes are no load.
    let probe = Request::get(format!("http://{addr}/"))
        .header("K-Network-Probe", "queue")
        .body(full(""))
        .unwrap();
    assert_eq!(
        client().request(probe).await.unwrap().status(),
        StatusCode::OK
    );
    let steady = qp.take_stats();
    assert_close(steady.average_concurrency, 3.0);
    assert_close(steady.average_proxied_concurrency, 1.0);
    assert_eq!(
        steady.request_count, 0.0,
        "no new arrivals, probes excluded"
    );
    assert_eq!(steady.proxied_request_count, 0.0);
    assert!(steady.process_uptime >= first.process_uptime);

    app.release(3);
    while let Some(s) = held.join_next().await {
        assert_eq!(s.unwrap(), StatusCode::OK);
    }
    wait_until("nothing in flight", || qp.in_flight() == 0).await;
    let draining = qp.take_stats();
    assert!(draining.average_concurrency > 0.0 && draining.average_concurrency < 3.0);

    for _ in 0..4 {
        assert_eq!(fetch(addr, "/").await.0, StatusCode::OK);
    }
    for _ in 0..2 {
        let resp = client().request(proxied(addr, "/")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    wait_until("nothing in flight", || qp.in_flight() == 0).await;
    let burst = qp.take_stats();
    assert_eq!(burst.request_count, 6.0);
    assert_eq!(burst.proxied_request_count, 2.0);

    let idle = qp.take_stats();
    assert_eq!(idle.request_count, 0.0);
    assert_eq!(idle.average_concurrency, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_response_is_load_until_its_body_ends() {
    let app = App::start().await;
    let qp = QueueProxy::start(QueueConfig::new(app.addr, "default", "stats-00002"))
        .await
        .unwrap();
    wait_ready(&qp).await;
    // The app's handler returns at once; the body streams for a minute.
    let resp = client()
        .request(get(qp.addr(), "/drip?n=2&every=60000"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    qp.take_stats();
    assert_eq!(app.current(), 0);
    assert_close(qp.take_stats().average_concurrency, 1.0);
    drop(resp);
    wait_until("the stream's end counted", || qp.in_flight() == 0).await;
    assert_eq!(qp.take_stats().request_count, 0.0);
    assert_eq!(qp.take_stats().average_concurrency, 0.0);
}
