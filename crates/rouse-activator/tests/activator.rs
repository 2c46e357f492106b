//! The activator with real sockets: hyper servers (and a real queue-proxy) as its backends.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rouse_activator::{Activator, ActivatorConfig, Poke, RevisionParams};
use rouse_http::empty;
use rouse_queue::{ProbeSpec, QueueConfig, QueueProxy};
use tokio::net::TcpListener;
use tokio::time::Instant;

use support::{BOUND, NS, TestBackend, get, read, wait_until};

fn counting_poke() -> (Poke, Arc<AtomicUsize>) {
    let pokes = Arc::new(AtomicUsize::new(0));
    let p = pokes.clone();
    (
        Arc::new(move |ns: &str, rev: &str| {
            assert_eq!(ns, NS);
            assert!(!rev.is_empty());
            p.fetch_add(1, Ordering::SeqCst);
        }),
        pokes,
    )
}

fn activator(depth: usize) -> (Arc<Activator>, Arc<AtomicUsize>) {
    let (poke, pokes) = counting_poke();
    let cfg = ActivatorConfig {
        queue_depth: depth,
        ..ActivatorConfig::default()
    };
    (Activator::new(cfg, poke), pokes)
}

fn params(cc: u32, timeout: Duration) -> RevisionParams {
    RevisionParams {
        container_concurrency: cc,
        timeout,
        response_start_timeout: None,
        h2c: false,
        request_body_buffer: rouse_http::DEFAULT_REQUEST_BODY_BUFFER,
    }
}

/// An app on loopback answering `app`, for a real queue-proxy to front.
async fn app() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|_req: Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("app"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_requests_at_zero_make_one_activation_and_all_get_200() {
    let (act, pokes) = activator(10_000);
    act.set_revision(NS, "r", params(0, Duration::from_secs(30)));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let act = act.clone();
        tasks.push(tokio::spawn(async move {
            read(act.handle(NS, "r", get("/")).await).await
        }));
    }
    wait_until("50 wait", || act.waiting(NS, "r") == 50).await;
    assert_eq!(pokes.load(Ordering::SeqCst), 1);

    // The instance comes up: a real queue-proxy in front of an app.
    let qp = QueueProxy::start(QueueConfig {
        app_addr: app().await,
        h2c: false,
        container_concurrency: 0,
        readiness: ProbeSpec::default(),
        revision: "r".into(),
        namespace: NS.into(),
        timeout: None,
        response_start_timeout: None,
        idle_timeout: None,
        request_body_buffer: rouse_http::DEFAULT_REQUEST_BODY_BUFFER,
        request_log: None,
    })
    .await
    .unwrap();
    act.set_backends(NS, "r", vec![qp.addr()]);
    for t in tasks {
        let (status, body, cold) = tokio::time::timeout(BOUND, t).await.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.unwrap(), "app");
        assert!(
            cold.is_some(),
            "waited for the activation: K-Cold-Start expected"
        );
    }
    assert_eq!(pokes.load(Ordering::SeqCst), 1);
    assert_eq!(act.waiting(NS, "r"), 0);
    let m = act.metrics_text();
    assert!(
        m.contains("rouse_activator_activations_total{namespace=\"default\",revision=\"r\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains(
            "rouse_activator_requests_total{namespace=\"default\",revision=\"r\",code=\"200\"} 50\n"
        ),
        "{m}"
    );
    assert!(
        m.contains("rouse_activator_cold_start_seconds_count 1\n"),
        "{m}"
    );
    assert!(
        m.contains("rouse_activator_requests_queued{namespace=\"default\",revision=\"r\"} 0\n"),
        "{m}"
    );

    // Warm now: no new activation.
    let (status, _, cold) = read(act.handle(NS, "r", get("/")).await).await;
    assert_eq!((status, cold), (StatusCode::OK, None));
    assert_eq!(pokes.load(Ordering::SeqCst), 1);

    // The instance goes away: the activation re-arms, and the next request pokes again.
    act.set_backends(NS, "r", vec![]);
    let waiter = {
        let act = act.clone();
        tokio::spawn(async move { read(act.handle(NS, "r", get("/")).await).await })
    };
    wait_until("second activation", || pokes.load(Ordering::SeqCst) == 2).await;
    act.set_backends(NS, "r", vec![qp.addr()]);
    assert_eq!(waiter.await.unwrap().0, StatusCode::OK);
}

#[tokio::test]
async fn nothing_is_sent_to_a_backend_before_it_passes_the_probe() {
    let (act, _) = activator(100);
    let b = TestBackend::start("b", false).await;
    act.set_backends(NS, "r", vec![b.addr]);
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let act = act.clone();
        tasks.push(tokio::spawn(async move {
            read(act.handle(NS, "r", get("/")).await).await
        }));
    }
    // Several failed probes go by with the requests still waiting.
    wait_until("probed 5 times", || b.probes() >= 5).await;
    assert_eq!(b.served(), 0);
    assert_eq!(act.waiting(NS, "r"), 5);
    assert!(act.ready_backends(NS, "r").is_empty());
    b.set_ready(true);
    for t in tasks {
        let (status, body, _) = t.await.unwrap();
        assert_eq!((status, body.unwrap().as_str()), (StatusCode::OK, "b"));
    }
    assert_eq!(b.served(), 5);
    assert_eq!(act.ready_backends(NS, "r"), vec![b.addr]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_one_never_gives_a_backend_two_requests() {
    let (act, _) = activator(1000);
    act.set_revision(NS, "r", params(1, Duration::from_secs(30)));
    let bs = [
        TestBackend::start("a", true).await,
        TestBackend::start("b", true).await,
        TestBackend::start("c", true).await,
    ];
    act.set_backends(NS, "r", bs.iter().map(|b| b.addr).collect());
    wait_until("3 probed", || act.ready_backends(NS, "r").len() == 3).await;
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let act = act.clone();
        tasks.push(tokio::spawn(async move {
            read(act.handle(NS, "r", get("/slow?ms=20")).await).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().0, StatusCode::OK);
    }
    for b in &bs {
        assert_eq!(b.max_concurrency(), 1, "a backend saw two requests at once");
        assert!(b.served() > 0, "every backend takes a share");
    }
    assert_eq!(bs.iter().map(TestBackend::served).sum::<usize>(), 30);
}

#[tokio::test]
async fn a_full_queue_answers_503_at_once_and_the_rest_are_served() {
    let (act, _) = activator(5);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let act = act.clone();
        tasks.push(tokio::spawn(async move {
            read(act.handle(NS, "r", get("/")).await).await
        }));
    }
    // Five are refused at once while the other five wait (no backend exists yet).
    wait_until("5 refused, 5 waiting", || {
        act.waiting(NS, "r") == 5 && tasks.iter().filter(|t| t.is_finished()).count() == 5
    })
    .await;
    let (refused, done): (Vec<_>, Vec<_>) = tasks.into_iter().partition(|t| t.is_finished());
    for t in refused {
        let (status, body, _) = t.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body.unwrap(), "activator queue full for revision r\n");
    }
    let b = TestBackend::start("b", true).await;
    act.set_backends(NS, "r", vec![b.addr]);
    for t in done {
        assert_eq!(t.await.unwrap().0, StatusCode::OK);
    }
    let m = act.metrics_text();
    assert!(
        m.contains(
            "rouse_activator_queue_overflows_total{namespace=\"default\",revision=\"r\"} 5\n"
        ),
        "{m}"
    );
}

#[tokio::test]
async fn a_new_queue_depth_bounds_new_arrivals_and_keeps_those_waiting() {
    let (act, _) = activator(1);
    let waiting = {
        let act = act.clone();
        tokio::spawn(async move { read(act.handle(NS, "r", get("/")).await).await })
    };
    wait_until("one waiting", || act.waiting(NS, "r") == 1).await;
    let (status, body, _) = read(act.handle(NS, "r", get("/")).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body.unwrap(), "activator queue full for revision r\n");

    // Raised (config-autoscaler changed): the next request waits too.
    act.set_queue_depth(2);
    assert_eq!(act.config().queue_depth, 2);
    let second = {
        let act = act.clone();
        tokio::spawn(async move { read(act.handle(NS, "r", get("/")).await).await })
    };
    wait_until("two waiting", || act.waiting(NS, "r") == 2).await;
    // Lowered below what waits: those waiting stay, a new one is refused.
    act.set_queue_depth(1);
    let (status, _, _) = read(act.handle(NS, "r", get("/")).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(act.waiting(NS, "r"), 2);
    let b = TestBackend::start("b", true).await;
    act.set_backends(NS, "r", vec![b.addr]);
    for t in [waiting, second] {
        assert_eq!(t.await.unwrap().0, StatusCode::OK);
    }
}

#[tokio::test(start_paused = true)]
async fn waiting_past_the_revision_timeout_is_a_503_with_the_reason() {
    let (act, pokes) = activator(100);
    act.set_revision(NS, "r", params(0, Duration::from_secs(2)));
    let start = Instant::now();
    let (status, body, _) = read(act.handle(NS, "r", get("/")).await).await;
    // Knative's activator: a throttler deadline is a 503 with the error text.
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body.unwrap(),
        "activator request timeout: context deadline exceeded\n"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(pokes.load(Ordering::SeqCst), 1);
    assert_eq!(act.waiting(NS, "r"), 0);
    let m = act.metrics_text();
    assert!(
        m.contains("rouse_activator_timeouts_total{namespace=\"default\",revision=\"r\"} 1\n"),
        "{m}"
    );

    // Nobody waits any more and no instance came: the next request is a new activation.
    let (status, _, _) = read(act.handle(NS, "r", get("/")).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(pokes.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn stats_report_time_weighted_concurrency_and_arrivals() {
    let (act, _) = activator(100);
    act.take_stats();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let act = act.clone();
        tasks.push(tokio::spawn(async move {
            act.handle(NS, "r", get("/")).await.status()
        }));
    }
    wait_until("2 waiting", || act.waiting(NS, "r") == 2).await;
    // Not a wait for a condition: a stats period of a known length, whose average
    // concurrency is checked below.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = act.take_stats();
    assert_eq!(stats.len(), 1);
    assert_eq!(
        (stats[0].namespace.as_str(), stats[0].revision.as_str()),
        (NS, "r")
    );
    assert_eq!(stats[0].request_count, 2.0);
    // Both waited the whole period, but for the few ms wait_until may have taken.
    let avg = stats[0].average_concurrency;
    assert!((1.95..=2.0).contains(&avg), "{stats:?}");

    // Dropping the waiting requests takes them out of the statistics at once.
    for t in &tasks {
        t.abort();
    }
    wait_until("none waiting", || act.waiting(NS, "r") == 0).await;
    act.take_stats();
    // A whole stats period with nothing waiting: it must report nothing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(act.take_stats().is_empty());
}

#[tokio::test]
async fn a_client_that_hangs_up_leaves_the_queue_and_holds_nothing() {
    let (act, _) = activator(100);
    act.set_revision(NS, "r", params(1, Duration::from_secs(30)));
    let waiter = {
        let act = act.clone();
        tokio::spawn(async move { act.handle(NS, "r", get("/")).await })
    };
    wait_until("waiting", || act.waiting(NS, "r") == 1).await;
    waiter.abort();
    wait_until("left the queue", || act.waiting(NS, "r") == 0).await;
    assert!(
        act.metrics_text()
            .contains("rouse_activator_requests_queued{namespace=\"default\",revision=\"r\"} 0\n")
    );

    // With CC 1 and one backend: a forwarded request that is dropped frees its slot at once.
    let b = TestBackend::start("b", true).await;
    act.set_backends(NS, "r", vec![b.addr]);
    wait_until("probed", || !act.ready_backends(NS, "r").is_empty()).await;
    assert_eq!(b.served(), 0, "the request that left was never forwarded");
    let hung = {
        let act = act.clone();
        tokio::spawn(async move { act.handle(NS, "r", get("/hang")).await })
    };
    wait_until("hang forwarded", || b.served() == 1).await;
    let next = {
        let act = act.clone();
        tokio::spawn(async move { read(act.handle(NS, "r", get("/")).await).await })
    };
    wait_until("next waits for the slot", || act.waiting(NS, "r") == 1).await;
    hung.abort();
    let (status, body, _) = tokio::time::timeout(BOUND, next).await.unwrap().unwrap();
    assert_eq!((status, body.unwrap().as_str()), (StatusCode::OK, "b"));
}

#[tokio::test]
async fn a_vanished_backend_is_retried_elsewhere_or_waited_out() {
    let (act, _) = activator(100);
    // CC 1: first available in address order, so the lower address is always tried first.
    act.set_revision(NS, "r", params(1, Duration::from_secs(30)));
    let x = TestBackend::start("x", true).await;
    let y = TestBackend::start("y", true).await;
    let (low, high) = if x.addr < y.addr { (x, y) } else { (y, x) };
    act.set_backends(NS, "r", vec![low.addr, high.addr]);
    wait_until("both probed", || act.ready_backends(NS, "r").len() == 2).await;
    let dead = low.addr;
    low.kill().await;
    let (status, body, cold) = read(act.handle(NS, "r", get("/")).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.unwrap(), high.name, "served by the survivor");
    assert_eq!(cold, None);
    assert_eq!(act.ready_backends(NS, "r"), vec![high.addr]);

    // Only a dead backend left "ready": the request waits for a live one instead of failing.
    high.kill().await;
    let z = TestBackend::start("z", true).await;
    let waiter = {
        let act = act.clone();
        tokio::spawn(async move { read(act.handle(NS, "r", get("/")).await).await })
    };
    wait_until("waiting again", || act.waiting(NS, "r") == 1).await;
    assert!(act.ready_backends(NS, "r").is_empty());
    act.set_backends(NS, "r", vec![dead, z.addr]);
    let (status, body, cold) = waiter.await.unwrap();
    assert_eq!((status, body.unwrap().as_str()), (StatusCode::OK, "z"));
    assert!(cold.is_some(), "it waited for a new instance");
}

#[tokio::test]
async fn cold_start_header_only_after_a_wait_and_the_probe_answers() {
    let (act, _) = activator(100);
    let waiter = {
        let act = act.clone();
        tokio::spawn(async move { read(act.handle(NS, "r", get("/")).await).await })
    };
    wait_until("waiting", || act.waiting(NS, "r") == 1).await;
    // Not a wait for a condition: the request must stay queued for a known minimum time, so
    // the K-Cold-Start header it gets can be checked against that time below.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let b = TestBackend::start("b", true).await;
    act.set_backends(NS, "r", vec![b.addr]);
    let (status, _, cold) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let ms: u64 = cold.expect("K-Cold-Start").parse().unwrap();
    assert!(ms >= 30, "waited {ms} ms");
    let (status, _, cold) = read(act.handle(NS, "r", get("/")).await).await;
    assert_eq!((status, cold), (StatusCode::OK, None));

    let probe = Request::get("/")
        .header("k-network-probe", "activator")
        .body(empty())
        .unwrap();
    let (status, body, _) = read(act.handle(NS, "unknown", probe).await).await;
    assert_eq!(
        (status, body.unwrap().as_str()),
        (StatusCode::OK, "activator")
    );
    let probe = Request::get("/")
        .header("k-network-probe", "queue")
        .body(empty())
        .unwrap();
    assert_eq!(
        act.handle(NS, "r", probe).await.status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn forwarded_requests_are_marked_and_keep_their_host() {
    let (act, _) = activator(100);
    let b = TestBackend::start("b", true).await;
    act.set_backends(NS, "r", vec![b.addr]);
    let req = Request::get("/headers?x=1")
        .header("host", support::HOST)
        .header("knative-serving-revision", "other")
        .header("x-user", "kept")
        .body(empty())
        .unwrap();
    let (status, body, _) = read(act.handle(NS, "r", req).await).await;
    let body = body.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("host: hello.default.example.com\n"), "{body}");
    assert!(
        body.contains("k-original-host: hello.default.example.com\n"),
        "{body}"
    );
    assert!(body.contains("k-proxy-request: activator\n"), "{body}");
    assert!(body.contains("x-user: kept\n"), "{body}");
    assert!(!body.contains("knative-serving-revision"), "{body}");
}

#[tokio::test]
async fn the_timeout_bounds_the_forwarded_request_too() {
    let (act, _) = activator(100);
    act.set_revision(NS, "r", params(0, Duration::from_millis(400)));
    let b = TestBackend::start("b", true).await;
    act.set_backends(NS, "r", vec![b.addr]);
    wait_until("probed", || !act.ready_backends(NS, "r").is_empty()).await;
    // Nothing sent yet when the budget runs out: 504.
    let (status, body, _) = read(act.handle(NS, "r", get("/slow?ms=3000")).await).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body.unwrap(), "activator request timeout\n");
    // Bytes already flowing: the status stays, the body is cut off.
    let (status, body, _) = read(act.handle(NS, "r", get("/trickle")).await).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_err(), "body should be cut off: {body:?}");
    // A response-start limit shorter than the total applies before the first byte.
    act.set_revision(
        NS,
        "r",
        RevisionParams {
            container_concurrency: 0,
            timeout: Duration::from_secs(30),
            response_start_timeout: Some(Duration::from_millis(200)),
            h2c: false,
            request_body_buffer: rouse_http::DEFAULT_REQUEST_BODY_BUFFER,
        },
    );
    let (status, _, _) = read(act.handle(NS, "r", get("/slow?ms=3000")).await).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let m = act.metrics_text();
    assert!(
        m.contains("rouse_activator_timeouts_total{namespace=\"default\",revision=\"r\"} 3\n"),
        "{m}"
    );
}

#[tokio::test]
async fn removing_a_revision_answers_its_waiting_requests() {
    let (act, _) = activator(100);
    let waiter = {
        let act = act.clone();
        tokio::spawn(async move { read(act.handle(NS, "r", get("/")).await).await })
    };
    wait_until("waiting", || act.waiting(NS, "r") == 1).await;
    act.remove_revision(NS, "r");
    let (status, body, _) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body.unwrap(), "revision r was removed\n");
    assert_eq!(act.waiting(NS, "r"), 0);
}

#[tokio::test]
async fn a_slot_handed_to_a_request_that_is_gone_is_not_lost() {
    let (act, _) = activator(100);
    act.set_revision(NS, "r", params(1, Duration::from_secs(30)));
    let b = TestBackend::start("b", true).await;
    act.set_backends(NS, "r", vec![b.addr]);
    wait_until("probed", || !act.ready_backends(NS, "r").is_empty()).await;
    let spawn = |path: &'static str| {
        let act = act.clone();
        tokio::spawn(async move { act.handle(NS, "r", get(path)).await.status() })
    };
    let holder = spawn("/hang");
    wait_until("hang forwarded", || b.served() == 1).await;
    let waiter = spawn("/");
    wait_until("waiter queued", || act.waiting(NS, "r") == 1).await;
    // The holder's slot goes to the waiter as the holder is dropped, and the waiter is
    // dropped before it ever runs again: the slot must come back.
    holder.abort();
    waiter.abort();
    wait_until("queue empty", || act.waiting(NS, "r") == 0).await;
    let (status, body, _) = tokio::time::timeout(BOUND, async {
        read(act.handle(NS, "r", get("/")).await).await
    })
    .await
    .expect("the slot leaked");
    assert_eq!((status, body.unwrap().as_str()), (StatusCode::OK, "b"));
}
