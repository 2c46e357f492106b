//! Scraping queue-proxies over real loopback sockets: Knative's sample size, old pods first,
//! a failing pod replaced by the next, an incomplete sample recording nothing, the timeout,
//! and the sample extrapolated to every ready pod.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use hyper::service::service_fn;
use rouse_http::{Body, full, text_response};
use rouse_kube::scrape::{ScrapeError, Target, scrape_pod, scrape_revision};
use rouse_queue::QueueStats;
use tokio::net::TcpListener;

#[derive(Clone, Copy)]
enum Answer {
    Stat,
    Error,
    Silent,
}

/// A queue-proxy's stats port: answers each scrape as told and counts them.
struct StatsPort {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

async fn stats_port(stats: QueueStats, answer: Answer) -> StatsPort {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let make = move |_remote| {
        let hits = counted.clone();
        service_fn(move |req: Request<Body>| {
            hits.fetch_add(1, Ordering::SeqCst);
            let asked_protobuf = req
                .headers()
                .get(http::header::ACCEPT)
                .is_some_and(|v| v == "application/protobuf");
            async move {
                let resp = match answer {
                    Answer::Stat if asked_protobuf && req.uri().path() == "/metrics" => {
                        http::Response::new(full(stats.to_protobuf("pod")))
                    }
                    Answer::Stat => text_response(StatusCode::NOT_FOUND, "not that"),
                    Answer::Error => text_response(StatusCode::INTERNAL_SERVER_ERROR, "broken"),
                    Answer::Silent => {
                        std::future::pending::<()>().await;
                        unreachable!()
                    }
                };
                Ok::<_, Infallible>(resp)
            }
        })
    };
    tokio::spawn(rouse_http::serve(listener, make, std::future::pending()));
    StatsPort { addr, hits }
}

fn load(concurrency: f64, requests: f64) -> QueueStats {
    QueueStats {
        average_concurrency: concurrency,
        average_proxied_concurrency: 0.0,
        request_count: requests,
        proxied_request_count: 0.0,
        process_uptime: 120.0,
    }
}

fn target(i: usize, p: &StatsPort, old: bool) -> Target {
    Target {
        pod: format!("pod-{i}"),
        addr: p.addr,
        old,
    }
}

fn hits(ports: &[StatsPort]) -> usize {
    ports.iter().map(|p| p.hits.load(Ordering::SeqCst)).sum()
}

const TIMEOUT: Duration = Duration::from_secs(3);

#[tokio::test]
async fn one_pod_is_read_in_knatives_wire_format() {
    let p = stats_port(load(2.5, 7.0), Answer::Stat).await;
    let got = scrape_pod(p.addr, TIMEOUT).await.unwrap();
    assert_eq!(got, load(2.5, 7.0));
    let broken = stats_port(load(1.0, 1.0), Answer::Error).await;
    let err = scrape_pod(broken.addr, TIMEOUT).await.unwrap_err();
    assert!(err.contains("500"), "{err}");
}

#[tokio::test]
async fn ten_pods_are_sampled_seven_and_extrapolated_to_ten() {
    let mut ports = Vec::new();
    for _ in 0..10 {
        ports.push(stats_port(load(2.0, 3.0), Answer::Stat).await);
    }
    let targets = ports
        .iter()
        .enumerate()
        .map(|(i, p)| target(i, p, true))
        .collect();
    let mut rng = fastrand::Rng::with_seed(1);
    let got = scrape_revision(targets, TIMEOUT, &mut rng)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hits(&ports), 7, "Knative's sample of 10 pods is 7");
    assert!((got.average_concurrency - 20.0).abs() < 1e-9, "{got:?}");
    assert!((got.request_count - 30.0).abs() < 1e-9, "{got:?}");
    assert_eq!(got.process_uptime, 120.0);
}

#[tokio::test]
async fn three_pods_or_fewer_are_all_read() {
    let mut ports = Vec::new();
    for c in [1.0, 2.0, 4.0] {
        ports.push(stats_port(load(c, c), Answer::Stat).await);
    }
    let targets = ports
        .iter()
        .enumerate()
        .map(|(i, p)| target(i, p, false))
        .collect();
    let got = scrape_revision(targets, TIMEOUT, &mut fastrand::Rng::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hits(&ports), 3);
    assert_eq!(got.average_concurrency, 7.0);
    // No pod: nothing to record.
    let none = scrape_revision(Vec::new(), TIMEOUT, &mut fastrand::Rng::new()).await;
    assert_eq!(none, Ok(None));
}

#[tokio::test]
async fn old_pods_are_preferred_to_young_ones() {
    // 10 old and 5 young: the sample of 15 is 8, all from the old ones.
    let mut old = Vec::new();
    let mut young = Vec::new();
    for _ in 0..10 {
        old.push(stats_port(load(1.0, 1.0), Answer::Stat).await);
    }
    for _ in 0..5 {
        young.push(stats_port(load(1.0, 1.0), Answer::Stat).await);
    }
    let mut targets: Vec<Target> = young
        .iter()
        .enumerate()
        .map(|(i, p)| target(100 + i, p, false))
        .collect();
    targets.extend(old.iter().enumerate().map(|(i, p)| target(i, p, true)));
    let got = scrape_revision(targets, TIMEOUT, &mut fastrand::Rng::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hits(&old), 8);
    assert_eq!(hits(&young), 0);
    assert!((got.average_concurrency - 15.0).abs() < 1e-9);
}

#[tokio::test]
async fn a_failing_pod_is_replaced_and_a_short_sample_records_nothing() {
    // 5 pods, sample 4: one broken pod is replaced by the fifth.
    let mut ports = Vec::new();
    for i in 0..5 {
        let answer = if i == 0 { Answer::Error } else { Answer::Stat };
        ports.push(stats_port(load(1.0, 2.0), answer).await);
    }
    let targets: Vec<Target> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| target(i, p, true))
        .collect();
    // Whatever the order, the broken pod is tried only when drawn; the answer is always the
    // four good pods' sum extrapolated to five.
    let got = scrape_revision(targets.clone(), TIMEOUT, &mut fastrand::Rng::new())
        .await
        .unwrap()
        .unwrap();
    assert!((got.average_concurrency - 5.0).abs() < 1e-9, "{got:?}");
    assert!((got.request_count - 10.0).abs() < 1e-9, "{got:?}");

    // 4 pods, sample 4, one broken: the sample cannot be completed.
    let err = scrape_revision(targets[..4].to_vec(), TIMEOUT, &mut fastrand::Rng::new())
        .await
        .unwrap_err();
    match &err {
        ScrapeError::Incomplete { got, wanted, last } => {
            assert_eq!((*got, *wanted), (3, 4));
            assert!(last.contains("pod-0") && last.contains("500"), "{last}");
        }
    }
    // A pod that is not listening fails as fast.
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone_addr = gone.local_addr().unwrap();
    drop(gone);
    assert!(scrape_pod(gone_addr, TIMEOUT).await.is_err());
}

#[tokio::test]
async fn a_pod_that_does_not_answer_times_out() {
    let silent = stats_port(load(1.0, 1.0), Answer::Silent).await;
    let good = stats_port(load(3.0, 1.0), Answer::Stat).await;
    let started = Instant::now();
    let err = scrape_pod(silent.addr, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(err.contains("no answer"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Beside a good pod (both read: 2 ≤ 3), the silent one makes the sample short.
    let targets = vec![target(0, &silent, true), target(1, &good, true)];
    let r = scrape_revision(
        targets,
        Duration::from_millis(200),
        &mut fastrand::Rng::new(),
    )
    .await;
    assert!(
        matches!(
            r,
            Err(ScrapeError::Incomplete {
                got: 1,
                wanted: 2,
                ..
            })
        ),
        "{r:?}"
    );
}
