//! Requests for revisions that were deleted while routes still name them, and for hosts of
//! routes without traffic yet: answered 503 at once, with why, on both the fast path and the
//! general path (a protocol-switch request), never queued in the activator.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rouse_activator::{Activator, ActivatorConfig};
use rouse_gateway::{Gateway, RouteTarget, RoutingTable};
use tokio::net::TcpListener;

const NS: &str = "default";

async fn send(
    c: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (StatusCode, String, Duration) {
    let start = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("answered within 10 s")
        .expect("request");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        String::from_utf8_lossy(&body).into_owned(),
        start.elapsed(),
    )
}

#[tokio::test]
async fn deleted_revisions_and_unready_routes_get_an_immediate_503() {
    let pokes = Arc::new(AtomicUsize::new(0));
    let p = pokes.clone();
    let act = Activator::new(
        ActivatorConfig::default(),
        Arc::new(move |_: &str, _: &str| {
            p.fetch_add(1, Ordering::SeqCst);
        }),
    );
    let gw = Gateway::new(act.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(gw.clone().serve(listener, std::future::pending()));

    let mut table = RoutingTable::new();
    table.insert(
        "old-s.default.example.com".into(),
        vec![RouteTarget {
            namespace: NS.into(),
            revision: "s-00001".into(),
            percent: 100,
        }],
    );
    table.insert_unavailable(
        "wip.default.example.com".into(),
        "route \"wip\" exists but is not ready: RevisionMissing: waiting".into(),
    );
    gw.set_routes(table);
    gw.mark_removed(NS, "s-00001");
    assert!(gw.is_removed(NS, "s-00001"));

    let c: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let plain = |host: &str| {
        Request::get(format!("http://{addr}/"))
            .header("Host", host)
            .body(Full::default())
            .unwrap()
    };
    // A protocol-switch request takes the general path.
    let upgrade = |host: &str| {
        Request::get(format!("http://{addr}/"))
            .header("Host", host)
            .header("Connection", "upgrade")
            .header("Upgrade", "websocket")
            .body(Full::default())
            .unwrap()
    };
    for req in [
        plain("old-s.default.example.com"),
        upgrade("old-s.default.example.com"),
    ] {
        let (status, body, took) = send(&c, req).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            body.contains("\"s-00001\"") && body.contains("no longer exists"),
            "{body}"
        );
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }
    for req in [
        plain("wip.default.example.com"),
        upgrade("wip.default.example.com"),
    ] {
        let (status, body, _) = send(&c, req).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("not ready: RevisionMissing"), "{body}");
    }
    let (status, _, _) = send(&c, plain("nobody.default.example.com")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nothing was queued for, or woke, the deleted revision.
    assert_eq!(pokes.load(Ordering::SeqCst), 0);
    assert_eq!(act.waiting(NS, "s-00001"), 0);

    // Setting the revision again (re-created) clears the mark.
    gw.set_endpoints(NS, "s-00001", vec![]);
    assert!(!gw.is_removed(NS, "s-00001"));
}
