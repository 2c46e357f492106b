//! The containerConcurrency breaker through real sockets: an instrumented app behind a real
//! queue-proxy.

mod common;

use common::{App, BOUND, client, fetch, get, text, wait_ready, wait_until};
use http::{Request, StatusCode};
use rouse_http::full;
use rouse_queue::{QUEUE_FULL_BODY, QueueConfig, QueueProxy};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

async fn queue(app: &App, cc: u32) -> QueueProxy {
    let qp = QueueProxy::start(QueueConfig {
        container_concurrency: cc,
        ..QueueConfig::new(app.addr, "default", "cc-00001")
    })
    .await
    .unwrap();
    wait_ready(&qp).await;
    qp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_concurrency_one_the_app_never_sees_two_at_once() {
    let app = App::start().await;
    let qp = queue(&app, 1).await;
    let addr = qp.addr();
    let mut clients = JoinSet::new();
    for _ in 0..5 {
        clients.spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..20 {
                statuses.push(fetch(addr, "/sleep?ms=3").await.0);
            }
            statuses
        });
    }
    let mut ok = 0;
    while let Some(statuses) = clients.join_next().await {
        ok += statuses
            .unwrap()
            .into_iter()
            .filter(|s| *s == StatusCode::OK)
            .count();
    }
    assert_eq!(ok, 100);
    assert_eq!(app.seen(), 100);
    assert_eq!(app.max(), 1, "the app saw two requests at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admits_the_slots_and_ten_times_as_many_queued_and_refuses_the_rest_at_once() {
    let app = App::start().await;
    let qp = queue(&app, 2).await;
    let addr = qp.addr();
    let mut requests = JoinSet::new();
    for _ in 0..40 {
        requests.spawn(async move { fetch(addr, "/hold").await });
    }
    // Nothing is released yet, so every answer that comes back now is a refusal.
    let mut refused = 0;
    while refused < 18 {
        let (status, body) = tokio::time::timeout(BOUND, requests.join_next())
            .await
            .expect("refusals come back at once")
            .unwrap()
            .unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body.trim(), QUEUE_FULL_BODY);
        refused += 1;
    }
    wait_until("2 in the app and 20 queued", || {
        app.current() == 2 && qp.queued() == 20
    })
    .await;
    assert_eq!(qp.in_flight(), 22);
    assert_eq!(requests.len(), 22);
    app.release(22);
    while let Some(res) = requests.join_next().await {
        assert_eq!(res.unwrap(), (StatusCode::OK, "held".to_string()));
    }
    assert_eq!(app.seen(), 22);
    assert_eq!(app.max(), 2);
    assert_eq!(qp.queued(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_bypass_a_full_queue() {
    let app = App::start().await;
    let qp = queue(&app, 1).await;
    let addr = qp.addr();
    let mut held = JoinSet::new();
    for _ in 0..11 {
        held.spawn(async move { fetch(addr, "/hold").await });
    }
    wait_until("1 in the app and 10 queued", || qp.queued() == 10).await;
    assert_eq!(fetch(addr, "/").await.0, StatusCode::SERVICE_UNAVAILABLE);
    let probe = Request::get(format!("http://{addr}/"))
        .header("K-Network-Probe", "queue")
        .body(full(""))
        .unwrap();
    let (status, body) = text(client().request(probe).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "queue"));
    app.release(11);
    while let Some(res) = held.join_next().await {
        assert_eq!(res.unwrap().0, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_while_queued_gives_its_place_back() {
    let app = App::start().await;
    let qp = queue(&app, 1).await;
    let addr = qp.addr();
    let mut held = JoinSet::new();
    for _ in 0..10 {
        held.spawn(async move { fetch(addr, "/hold").await });
    }
    wait_until("1 in the app and 9 queued", || qp.queued() == 9).await;
    // The last place goes to a raw client that will hang up.
    let mut quitter = tokio::net::TcpStream::connect(addr).await.unwrap();
    quitter
        .write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    wait_until("the raw client queued", || qp.queued() == 10).await;
    assert_eq!(fetch(addr, "/").await.0, StatusCode::SERVICE_UNAVAILABLE);
    drop(quitter);
    wait_until("the hung-up client to leave the queue", || qp.queued() == 9).await;
    // Its place is free again: the next request waits instead of being refused.
    let next = tokio::spawn(async move { fetch(addr, "/hold").await });
    wait_until("the next request queued", || qp.queued() == 10).await;
    app.release(11);
    assert_eq!(
        tokio::time::timeout(BOUND, next).await.unwrap().unwrap(),
        (StatusCode::OK, "held".to_string())
    );
    while let Some(res) = held.join_next().await {
        assert_eq!(res.unwrap().0, StatusCode::OK);
    }
    assert_eq!(app.seen(), 11, "the hung-up request never reached the app");
    wait_until("nothing in flight", || qp.in_flight() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_means_unlimited() {
    let app = App::start().await;
    let qp = queue(&app, 0).await;
    let addr = qp.addr();
    let mut held = JoinSet::new();
    for _ in 0..30 {
        held.spawn(async move { fetch(addr, "/hold").await });
    }
    wait_until("all 30 in the app", || app.current() == 30).await;
    assert_eq!(qp.queued(), 0);
    app.release(30);
    while let Some(res) = held.join_next().await {
        assert_eq!(res.unwrap().0, StatusCode::OK);
    }
    // The queue-proxy's own request pipeline stays usable after.
    let (status, _) = text(client().request(get(addr, "/")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
}
