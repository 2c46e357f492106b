//! The gateway with real sockets: hyper backends (and a real queue-proxy) on loopback.

/// Backends that tell which of their connections served a request (`x-conn`) and how many
/// are open.
#[path = "../../rouse-activator/tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rouse_activator::{Activator, ActivatorConfig, RevisionParams};
use rouse_gateway::{Gateway, Mode, RouteTarget, RoutingTable};
use rouse_queue::{ProbeSpec, QueueConfig, QueueProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use support::{HOST, TestBackend};

const BOUND: Duration = Duration::from_secs(10);
const NS: &str = "default";

/// A backend answering `<name>` on `/`, its request headers on `/headers`, and `/slow?ms=N`;
/// it answers the activator's probe (`K-Network-Probe: queue`) as a ready queue-proxy does.
async fn backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    if req
                        .headers()
                        .get("k-network-probe")
                        .is_some_and(|v| v == "queue")
                    {
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("queue"))));
                    }
                    let body = match req.uri().path() {
                        "/headers" => {
                            let mut out = format!("backend: {name}\n");
                            for (k, v) in req.headers() {
                                out.push_str(&format!("{k}: {}\n", v.to_str().unwrap()));
                            }
                            out
                        }
                        "/slow" => {
                            let ms = req.uri().query().and_then(|q| q.strip_prefix("ms="));
                            let ms = ms.and_then(|m| m.parse().ok()).unwrap_or(0);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            format!("{name} slept")
                        }
                        _ => name.to_string(),
                    };
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

struct Running {
    addr: SocketAddr,
    gw: Arc<Gateway>,
    act: Arc<Activator>,
    pokes: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

async fn gateway() -> Running {
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
    let (stop, rx) = oneshot::channel();
    let done = tokio::spawn(gw.clone().serve(listener, async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        gw,
        act,
        pokes,
        stop: Some(stop),
        done,
    }
}

fn target(rev: &str, percent: u32) -> RouteTarget {
    RouteTarget {
        namespace: NS.into(),
        revision: rev.into(),
        percent,
    }
}

fn table(routes: &[(&str, Vec<RouteTarget>)]) -> RoutingTable {
    let mut t = RoutingTable::new();
    for (host, targets) in routes {
        t.insert(host.to_string(), targets.clone());
    }
    t
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn get(gw: SocketAddr, host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{gw}{path}"))
        .header("Host", host)
        .body(Full::default())
        .unwrap()
}

async fn send(
    c: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (StatusCode, String) {
    let resp = c.request(req).await.expect("request");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn routes_by_host_ignoring_case_and_port() {
    let g = gateway().await;
    let (a, b) = (backend("a").await, backend("b").await);
    g.gw.set_routes(table(&[
        ("a.default.example.com", vec![target("a-00001", 100)]),
        ("b.default.example.com", vec![target("b-00001", 100)]),
    ]));
    g.gw.set_endpoints(NS, "a-00001", vec![a]);
    g.gw.set_endpoints(NS, "b-00001", vec![b]);
    let c = client();
    assert_eq!(
        send(&c, get(g.addr, "a.default.example.com", "/")).await.1,
        "a"
    );
    assert_eq!(
        send(&c, get(g.addr, "B.Default.Example.COM:8080", "/"))
            .await
            .1,
        "b"
    );

    let (status, body) = send(&c, get(g.addr, "nope.default.example.com", "/")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("nope.default.example.com"), "{body}");
}

#[tokio::test]
async fn a_tag_header_picks_the_tags_revision_and_never_reaches_the_app() {
    let g = gateway().await;
    let (one, two) = (backend("one").await, backend("two").await);
    let host = "t.default.example.com";
    let mut routes = table(&[(host, vec![target("t-00002", 100)])]);
    routes.insert_tag(host.into(), "rev1".into(), vec![target("t-00001", 100)]);
    g.gw.set_routes(routes);
    g.gw.set_endpoints(NS, "t-00001", vec![one]);
    g.gw.set_endpoints(NS, "t-00002", vec![two]);
    let c = client();
    let tagged = |tag: &str, path: &str| {
        let mut req = get(g.addr, host, path);
        req.headers_mut()
            .insert("knative-serving-tag", tag.parse().unwrap());
        req
    };
    for _ in 0..5 {
        assert_eq!(send(&c, tagged("rev1", "/")).await.1, "one");
        // An unknown tag (tags match exactly) and no header take the default route.
        assert_eq!(send(&c, tagged("rev-wrong", "/")).await.1, "two");
        assert_eq!(send(&c, tagged("REV1", "/")).await.1, "two");
        assert_eq!(send(&c, get(g.addr, host, "/")).await.1, "two");
    }
    let (_, seen) = send(&c, tagged("rev1", "/headers")).await;
    assert!(seen.starts_with("backend: one\n"), "{seen}");
    assert!(!seen.contains("knative-serving-tag"), "{seen}");

    // Without tag routes (the feature off) the header changes nothing and is dropped.
    g.gw.set_routes(table(&[(host, vec![target("t-00002", 100)])]));
    assert_eq!(send(&c, tagged("rev1", "/")).await.1, "two");
    let (_, seen) = send(&c, tagged("rev1", "/headers")).await;
    assert!(!seen.contains("knative-serving-tag"), "{seen}");
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let g = gateway().await;
    g.gw.set_routes(table(&[(
        "a.default.example.com",
        vec![target("a-00001", 100)],
    )]));
    g.gw.set_endpoints(NS, "a-00001", vec![backend("a").await]);
    let c: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    // Over HTTP/2 the host travels as :authority.
    let req = Request::get("http://a.default.example.com/headers")
        .body(Full::default())
        .unwrap();
    let req = {
        let (mut parts, body) = req.into_parts();
        parts.uri = format!("http://{}/headers", g.addr).parse().unwrap();
        parts
            .headers
            .insert("host", "a.default.example.com".parse().unwrap());
        Request::from_parts(parts, body)
    };
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("backend: a"), "{body}");
    assert!(body.contains("host: a.default.example.com"), "{body}");
}

#[tokio::test]
async fn weighted_split_follows_percentages() {
    let g = gateway().await;
    g.gw.set_routes(table(&[(
        "split.default.example.com",
        vec![
            target("a-00001", 20),
            target("b-00001", 80),
            target("c-00001", 0),
        ],
    )]));
    g.gw.set_endpoints(NS, "a-00001", vec![backend("a").await]);
    g.gw.set_endpoints(NS, "b-00001", vec![backend("b").await]);
    g.gw.set_endpoints(NS, "c-00001", vec![backend("c").await]);
    let c = client();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..1000 {
        let (status, body) = send(&c, get(g.addr, "split.default.example.com", "/")).await;
        assert_eq!(status, StatusCode::OK);
        *counts.entry(body).or_default() += 1;
    }
    // Binomial(1000, 0.2): sd ~12.6, so ±80 is over 6 sd.
    let a = counts.get("a").copied().unwrap_or(0);
    assert!((120..=280).contains(&a), "{counts:?}");
    assert_eq!(
        a + counts.get("b").copied().unwrap_or(0),
        1000,
        "{counts:?}"
    );
    assert!(
        !counts.contains_key("c"),
        "a 0% target got traffic: {counts:?}"
    );
}

#[tokio::test]
async fn spreads_across_instances_avoiding_busy_ones() {
    let g = gateway().await;
    g.gw.set_routes(table(&[(
        "s.default.example.com",
        vec![target("s-00001", 100)],
    )]));
    let (x, y) = (backend("x").await, backend("y").await);
    g.gw.set_endpoints(NS, "s-00001", vec![x, y]);
    assert_eq!(g.gw.endpoints(NS, "s-00001"), vec![x, y]);
    let c = client();
    let mut seen = HashMap::<String, usize>::new();
    for _ in 0..10 {
        *seen
            .entry(send(&c, get(g.addr, "s.default.example.com", "/")).await.1)
            .or_default() += 1;
    }
    assert_eq!(
        (seen["x"], seen["y"]),
        (5, 5),
        "idle instances share evenly"
    );

    // While one instance holds a slow request, new requests go to the other.
    let (addr, c2) = (g.addr, c.clone());
    let slow = tokio::spawn(async move {
        send(&c2, get(addr, "s.default.example.com", "/slow?ms=1500")).await
    });
    wait_until(|| g.gw.in_flight() == 1).await;
    let mut others = Vec::new();
    for _ in 0..6 {
        others.push(send(&c, get(g.addr, "s.default.example.com", "/")).await.1);
    }
    let (_, slow_body) = slow.await.unwrap();
    let busy = slow_body.trim_end_matches(" slept").to_string();
    assert!(others.iter().all(|o| *o != busy), "busy {busy}: {others:?}");
}

/// Tag-header-based routing as a Kubernetes Ingress asks for it, with its paths' appended
/// headers: a request carrying `Knative-Serving-Tag: blue` goes to the tag's revision with the
/// tag set, any other request takes the default route, marked as such; a client cannot forge
/// the mark.
#[tokio::test]
async fn appended_headers_follow_the_route_a_request_took() {
    let g = gateway().await;
    let host = "h.default.example.com";
    let mut t = table(&[(host, vec![target("main-00001", 100)])]);
    let set = |n: &'static str, v: &'static str| {
        vec![(
            http::HeaderName::from_static(n),
            http::HeaderValue::from_static(v),
        )]
    };
    t.insert_tag(host.into(), "blue".into(), vec![target("blue-00001", 100)]);
    t.insert_appended(
        host.into(),
        "blue".into(),
        set("knative-serving-tag", "blue"),
    );
    t.insert_appended(
        host.into(),
        String::new(),
        set("knative-serving-default-route", "true"),
    );
    g.gw.set_routes(t);
    g.gw.set_endpoints(NS, "main-00001", vec![backend("main").await]);
    g.gw.set_endpoints(NS, "blue-00001", vec![backend("blue").await]);
    let c = client();
    let with = |headers: &[(&str, &str)]| {
        let mut req = Request::get(format!("http://{}/headers", g.addr)).header("Host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(Full::default()).unwrap()
    };

    let (status, body) = send(&c, with(&[("Knative-Serving-Tag", "blue")])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("backend: blue\n"), "{body}");
    assert!(body.contains("knative-serving-tag: blue\n"), "{body}");
    assert!(!body.contains("default-route"), "{body}");

    for headers in [
        &[][..],
        &[("Knative-Serving-Tag", "green")][..],
        &[("Knative-Serving-Default-Route", "false")][..],
    ] {
        let (status, body) = send(&c, with(headers)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with("backend: main\n"), "{headers:?}: {body}");
        assert!(
            body.contains("knative-serving-default-route: true\n"),
            "{body}"
        );
        assert!(
            !body.contains("green") && !body.contains(": false"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn a_mapped_domain_is_served_as_its_target_host() {
    let g = gateway().await;
    let mut t = table(&[("h.default.example.com", vec![target("h-00001", 100)])]);
    t.insert_alias("app.example.org".into(), "h.default.example.com".into());
    t.insert_alias(
        "gone.example.org".into(),
        "nothing.default.example.com".into(),
    );
    g.gw.set_routes(t);
    g.gw.set_endpoints(NS, "h-00001", vec![backend("h").await]);
    let c = client();
    // HTTP/1.1 (which the fast path would take for a plain host) and the Host rewritten.
    let (status, body) = send(&c, get(g.addr, "App.Example.org:8080", "/headers")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("host: h.default.example.com\n"), "{body}");
    // The client's own host is still what Forwarded says it asked for.
    assert!(
        body.contains("forwarded: for=127.0.0.1;host=\"App.Example.org:8080\";proto=http\n"),
        "{body}"
    );
    // HTTP/2 carries the host in :authority: rewritten as well.
    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = get(g.addr, "app.example.org", "/headers");
    let (status, body) = send(&h2, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("host: h.default.example.com\n"), "{body}");
    // A mapping whose target serves nothing is an unknown host.
    let (status, _) = send(&c, get(g.addr, "gone.example.org", "/")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn internal_headers_are_stripped_and_forwarding_added() {
    let g = gateway().await;
    g.gw.set_routes(table(&[(
        "h.default.example.com",
        vec![target("h-00001", 100)],
    )]));
    g.gw.set_endpoints(NS, "h-00001", vec![backend("h").await]);
    let req = Request::get(format!("http://{}/headers", g.addr))
        .header("Host", "h.default.example.com")
        .header("Knative-Serving-Revision", "other-rev")
        .header("Knative-Serving-Namespace", "kube-system")
        .header("K-Proxy-Request", "activator")
        .header("K-Original-Host", "evil.example.com")
        .header("K-Network-Probe", "queue")
        .header("K-Network-Hash", "abc")
        .header("X-Forwarded-For", "203.0.113.9")
        .header("X-User", "kept")
        .body(Full::default())
        .unwrap();
    let (status, body) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("host: h.default.example.com\n"), "{body}");
    assert!(body.contains("x-user: kept\n"), "{body}");
    assert!(
        body.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1\n"),
        "{body}"
    );
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    assert!(
        body.contains("forwarded: for=127.0.0.1;host=h.default.example.com;proto=http\n"),
        "{body}"
    );
    for gone in [
        "other-rev",
        "kube-system",
        "k-proxy-request",
        "k-original-host",
        "k-network-",
    ] {
        assert!(!body.contains(gone), "{gone} got through: {body}");
    }
    // The gateway names the revision itself for the next hop (an activator in another
    // process needs it; a queue-proxy strips it).
    assert!(
        body.contains("knative-serving-revision: h-00001\n"),
        "{body}"
    );
    assert!(
        body.contains(&format!("knative-serving-namespace: {NS}\n")),
        "{body}"
    );
}

#[tokio::test]
async fn a_client_cannot_reach_the_queue_proxy_health_check() {
    // gateway -> real queue-proxy -> app: the probe header must not stop at the queue-proxy.
    let g = gateway().await;
    let app = backend("app").await;
    let qp = QueueProxy::start(QueueConfig {
        app_addr: app,
        h2c: false,
        container_concurrency: 0,
        readiness: ProbeSpec::default(),
        revision: "q-00001".into(),
        namespace: NS.into(),
        timeout: None,
        response_start_timeout: None,
        idle_timeout: None,
        request_body_buffer: rouse_http::DEFAULT_REQUEST_BODY_BUFFER,
        request_log: None,
    })
    .await
    .unwrap();
    g.gw.set_routes(table(&[(
        "q.default.example.com",
        vec![target("q-00001", 100)],
    )]));
    g.gw.set_endpoints(NS, "q-00001", vec![qp.addr()]);
    let req = Request::get(format!("http://{}/", g.addr))
        .header("Host", "q.default.example.com")
        .header("K-Network-Probe", "queue")
        .body(Full::default())
        .unwrap();
    assert_eq!(
        send(&client(), req).await,
        (StatusCode::OK, "app".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_routes_and_endpoints_under_load_fails_nothing() {
    let g = gateway().await;
    let backends = [backend("a").await, backend("b").await, backend("c").await];
    let host = "load.default.example.com";
    g.gw.set_routes(table(&[(host, vec![target("l-00001", 100)])]));
    g.gw.set_endpoints(NS, "l-00001", backends.to_vec());
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (addr, done, failures) = (g.addr, done.clone(), failures.clone());
        clients.push(tokio::spawn(async move {
            let c = client();
            let mut seen = HashMap::<String, usize>::new();
            for _ in 0..150 {
                match c.request(get(addr, host, "/")).await {
                    Ok(resp) if resp.status() == StatusCode::OK => {
                        let body = resp.into_body().collect().await.unwrap().to_bytes();
                        *seen
                            .entry(String::from_utf8_lossy(&body).into_owned())
                            .or_default() += 1;
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            done.fetch_add(1, Ordering::SeqCst);
            seen
        }));
    }
    // Swap endpoint sets and routing tables (each always naming a live backend) meanwhile.
    let sets = [
        vec![backends[0]],
        vec![backends[1], backends[2]],
        vec![backends[2]],
        backends.to_vec(),
    ];
    let mut swaps = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while done.load(Ordering::SeqCst) < clients.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "load did not finish"
        );
        g.gw.set_endpoints(NS, "l-00001", sets[swaps % sets.len()].clone());
        let split = if swaps.is_multiple_of(2) {
            vec![target("l-00001", 100)]
        } else {
            vec![target("l-00001", 50), target("l-00001", 50)]
        };
        g.gw.set_routes(table(&[(host, split)]));
        swaps += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut total = HashMap::<String, usize>::new();
    for c in clients {
        for (k, v) in c.await.unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    assert_eq!(total.values().sum::<usize>(), 600);
    assert!(swaps > 10, "only {swaps} swaps happened during the load");
    assert_eq!(total.len(), 3, "every backend served some: {total:?}");
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish() {
    let mut g = gateway().await;
    g.gw.set_routes(table(&[(
        "d.default.example.com",
        vec![target("d-00001", 100)],
    )]));
    g.gw.set_endpoints(NS, "d-00001", vec![backend("d").await]);
    let addr = g.addr;
    let slow = tokio::spawn(async move {
        send(
            &client(),
            get(addr, "d.default.example.com", "/slow?ms=500"),
        )
        .await
    });
    wait_until(|| g.gw.in_flight() == 1).await;
    g.stop.take().unwrap().send(()).unwrap();
    assert_eq!(slow.await.unwrap(), (StatusCode::OK, "d slept".to_string()));
    tokio::time::timeout(BOUND, &mut g.done)
        .await
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
}

async fn wait_until(cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A real queue-proxy in front of a backend app.
async fn queue_proxy(rev: &str, app: SocketAddr) -> QueueProxy {
    QueueProxy::start(QueueConfig {
        app_addr: app,
        h2c: false,
        container_concurrency: 0,
        readiness: ProbeSpec::default(),
        revision: rev.into(),
        namespace: NS.into(),
        timeout: None,
        response_start_timeout: None,
        idle_timeout: None,
        request_body_buffer: rouse_http::DEFAULT_REQUEST_BODY_BUFFER,
        request_log: None,
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn proxy_mode_hands_requests_to_the_activator() {
    let g = gateway().await;
    let host = "p.default.example.com";
    g.gw.set_routes(table(&[(host, vec![target("p-00001", 100)])]));
    let b = backend("p").await;
    g.act.set_backends(NS, "p-00001", vec![b]);
    g.gw.set_revision(NS, "p-00001", Mode::Proxy, vec![b], false);
    assert_eq!(g.gw.mode(NS, "p-00001"), Some(Mode::Proxy));
    assert_eq!(g.gw.mode(NS, "other"), None);
    let c = client();
    let (status, body) = send(&c, get(g.addr, host, "/headers")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("k-proxy-request: activator\n"), "{body}");
    assert!(body.contains("host: p.default.example.com\n"), "{body}");
    assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "{body}");

    // Serve mode: straight to the instance.
    g.gw.set_revision(NS, "p-00001", Mode::Serve, vec![b], false);
    assert_eq!(g.gw.mode(NS, "p-00001"), Some(Mode::Serve));
    let (status, body) = send(&c, get(g.addr, host, "/headers")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains("k-proxy-request"), "{body}");
}

#[tokio::test]
async fn a_revision_at_zero_buffers_instead_of_failing() {
    let g = gateway().await;
    let host = "z.default.example.com";
    g.gw.set_routes(table(&[(host, vec![target("z-00001", 100)])]));
    g.gw.set_revision(NS, "z-00001", Mode::Proxy, vec![], false);
    let addr = g.addr;
    let mut waiting = Vec::new();
    for _ in 0..3 {
        waiting.push(tokio::spawn(async move {
            let resp = client().request(get(addr, host, "/")).await.unwrap();
            let cold = resp.headers().contains_key("k-cold-start");
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned(), cold)
        }));
    }
    wait_until(|| g.act.waiting(NS, "z-00001") == 3).await;
    assert_eq!(g.pokes.load(Ordering::SeqCst), 1);
    assert_eq!(g.gw.in_flight_for(NS, "z-00001"), 3);
    // An instance of this process (as in local mode): the waiting requests go on from the
    // gateway's fast path, which keeps their place and marks their cold start.
    let qp = queue_proxy("z-00001", backend("z").await).await;
    g.act.set_backends(NS, "z-00001", vec![qp.addr()]);
    for w in waiting {
        assert_eq!(w.await.unwrap(), (StatusCode::OK, "z".to_string(), true));
    }
    wait_until(|| g.gw.in_flight_for(NS, "z-00001") == 0).await;

    // Serve mode without endpoints, or a revision never set, also lands on the activator.
    g.gw.set_revision(NS, "z-00001", Mode::Serve, vec![], false);
    let c = client();
    assert_eq!(send(&c, get(g.addr, host, "/")).await.1, "z");
    g.gw.remove_revision(NS, "z-00001");
    assert_eq!(g.gw.mode(NS, "z-00001"), None);
    assert_eq!(send(&c, get(g.addr, host, "/")).await.1, "z");
}

#[tokio::test]
async fn a_refused_serve_endpoint_falls_back_to_the_activator() {
    let g = gateway().await;
    let host = "f.default.example.com";
    g.gw.set_routes(table(&[(host, vec![target("f-00001", 100)])]));
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let live = backend("live").await;
    g.gw.set_endpoints(NS, "f-00001", vec![dead]);
    g.act.set_backends(NS, "f-00001", vec![live]);
    let c = client();
    for _ in 0..3 {
        assert_eq!(
            send(&c, get(g.addr, host, "/")).await,
            (StatusCode::OK, "live".to_string())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_serve_proxy_serve_under_load_fails_nothing() {
    let g = gateway().await;
    let host = "m.default.example.com";
    let rev = "m-00001";
    g.gw.set_routes(table(&[(host, vec![target(rev, 100)])]));
    let qps = [
        queue_proxy(rev, backend("a").await).await,
        queue_proxy(rev, backend("b").await).await,
    ];
    let addrs: Vec<SocketAddr> = qps.iter().map(QueueProxy::addr).collect();
    g.act.set_revision(NS, rev, RevisionParams::default());
    g.act.set_backends(NS, rev, addrs.clone());
    wait_until(|| g.act.ready_backends(NS, rev).len() == 2).await;
    g.gw.set_revision(NS, rev, Mode::Serve, addrs.clone(), false);

    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (addr, done) = (g.addr, done.clone());
        clients.push(tokio::spawn(async move {
            let c = client();
            let mut bad = Vec::new();
            for _ in 0..250 {
                match c.request(get(addr, host, "/")).await {
                    Ok(resp) if resp.status() == StatusCode::OK => {
                        resp.into_body().collect().await.unwrap();
                    }
                    Ok(resp) => bad.push(resp.status().to_string()),
                    Err(e) => bad.push(e.to_string()),
                }
            }
            done.fetch_add(1, Ordering::SeqCst);
            bad
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut switches = 0usize;
    while done.load(Ordering::SeqCst) < clients.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "load did not finish"
        );
        let mode = if switches.is_multiple_of(2) {
            Mode::Proxy
        } else {
            Mode::Serve
        };
        g.gw.set_revision(NS, rev, mode, addrs.clone(), false);
        switches += 1;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let mut bad = Vec::new();
    for c in clients {
        bad.extend(c.await.unwrap());
    }
    assert!(bad.is_empty(), "non-200 answers: {bad:?}");
    assert!(switches > 10, "only {switches} switches during the load");
    let metrics = g.act.metrics_text();
    let via_activator: usize = metrics
        .lines()
        .find(|l| l.starts_with("rouse_activator_requests_total{") && l.contains("code=\"200\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        (1..1000).contains(&via_activator),
        "both paths served: {via_activator} of 1000 via the activator"
    );
    assert_eq!(g.gw.in_flight_for(NS, rev), 0);
}

/// A client on the HTTPS port that never completes its handshake (silent, or sending
/// something that is not TLS) is closed within the header read timeout, and does not keep
/// the listener from serving others.
#[tokio::test]
async fn tls_clients_that_never_finish_the_handshake_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let act = Activator::new(ActivatorConfig::default(), Arc::new(|_: &str, _: &str| {}));
    let gw = Gateway::new(act);
    let certs = rouse_gateway::Certificates::new();
    let cert = rcgen::generate_simple_self_signed(vec!["h.example.com".to_string()]).unwrap();
    let key = rouse_gateway::certified_key(
        cert.cert.pem().as_bytes(),
        cert.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap();
    certs.set(HashMap::from([("h.example.com".to_string(), key)]));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = rouse_http::ServerLimits {
        header_read_timeout: Some(Duration::from_millis(300)),
        ..rouse_http::ServerLimits::default()
    };
    tokio::spawn(gw.serve_tls(listener, certs, std::future::pending(), limits));
    let started = tokio::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut garbage = tokio::net::TcpStream::connect(addr).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: h.example.com\r\n\r\n")
        .await
        .unwrap();
    for conn in [&mut silent, &mut garbage] {
        let mut buf = Vec::new();
        // Closed by the server (EOF or reset), within the bound.
        let _ = tokio::time::timeout(BOUND, conn.read_to_end(&mut buf))
            .await
            .expect("the server closes the connection");
    }
    assert!(started.elapsed() < BOUND);
}

// HTTP/2 clients to HTTP/1.1 instances in other processes: bodiless requests go over the
// endpoint's kept-alive raw connections, the ones the fast path uses, with the head the
// pooled client would have written; an endpoint that refuses the connection passes the
// request on; an endpoint that leaves takes its connections with it.

const REV: &str = "hello-00001";

/// A gateway serving [`HOST`] from [`REV`].
async fn raw_gateway() -> Running {
    let g = gateway().await;
    g.gw.set_routes(table(&[(HOST, vec![target(REV, 100)])]));
    g
}

/// An HTTP/2 (prior knowledge) connection to `addr`.
async fn h2(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// An HTTP/2 GET for `path` on [`HOST`] (no Host header: the authority says it).
async fn h2_get(send: &mut SendRequest<Empty<Bytes>>, path: &str) -> Response<Incoming> {
    let req = Request::get(format!("http://{HOST}{path}"))
        .body(Empty::new())
        .unwrap();
    tokio::time::timeout(BOUND, send.send_request(req))
        .await
        .expect("answered within the bound")
        .expect("answered")
}

/// Status, `x-conn` (the instance's connection number) and body.
async fn read(resp: Response<Incoming>) -> (StatusCode, String, String) {
    let status = resp.status();
    let conn = resp
        .headers()
        .get("x-conn")
        .map_or(String::new(), |v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, conn, String::from_utf8_lossy(&body).into_owned())
}

/// One plain keep-alive HTTP/1.1 GET of `/` (the gateway's fast path takes it); the answer's
/// head, lowercase.
async fn h1_get(addr: SocketAddr) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    while !out.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(BOUND, tcp.read_u8())
            .await
            .expect("answered within the bound")
            .unwrap();
        out.push(byte);
    }
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}

#[tokio::test]
async fn an_h2_request_reaches_an_http1_instance_the_raw_way_with_its_head() {
    let g = raw_gateway().await;
    let (gw, addr) = (&g.gw, g.addr);
    let b = TestBackend::start("b", true).await;
    gw.set_revision(NS, REV, Mode::Serve, vec![b.addr], false);
    let mut send = h2(addr).await;

    let (status, conn, body) = read(h2_get(&mut send, "/headers?x=1").await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.starts_with("backend: b\n"), "{body}");
    for line in [
        "host: hello.default.example.com\n",
        "x-forwarded-for: 127.0.0.1\n",
        "x-forwarded-proto: http\n",
        "forwarded: for=127.0.0.1;host=hello.default.example.com;proto=http\n",
        "knative-serving-namespace: default\n",
        "knative-serving-revision: hello-00001\n",
        "version: HTTP/1.1\n",
    ] {
        assert!(body.contains(line), "{line:?} in {body}");
    }
    assert_eq!(body.matches("host:").count(), 1, "{body}");

    // The raw connection went back to the endpoint's pool (before the answer ended), which
    // its fast path shares: a plain HTTP/1.1 request goes on the same connection (the pooled
    // client would have kept it to itself).
    let answer = h1_get(addr).await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains(&format!("x-conn: {conn}\r\n")), "{answer}");
    assert_eq!(b.accepted(), 1);

    // A HEAD has no body; a streaming body holds the request's counts until it ends.
    let head = Request::head(format!("http://{HOST}/"))
        .body(Empty::new())
        .unwrap();
    let (status, _, body) = read(send.send_request(head).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
    let mut trickle = h2_get(&mut send, "/trickle").await;
    let first = trickle.body_mut().frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first ");
    assert_eq!(gw.in_flight_for(NS, REV), 1);
    drop(trickle);
    wait_until(|| gw.in_flight_for(NS, REV) == 0).await;
}

#[tokio::test]
async fn through_the_activator_an_h2_request_is_marked_and_keeps_its_host() {
    let g = raw_gateway().await;
    let (gw, act, addr) = (&g.gw, &g.act, g.addr);
    let b = TestBackend::start("b", true).await;
    gw.set_revision(NS, REV, Mode::Proxy, vec![], false);
    act.set_backends(NS, REV, vec![b.addr]);
    let mut send = h2(addr).await;
    let (status, conn, body) = read(h2_get(&mut send, "/headers").await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for line in [
        "host: hello.default.example.com\n",
        "k-original-host: hello.default.example.com\n",
        "k-proxy-request: activator\n",
        "forwarded: for=127.0.0.1;host=hello.default.example.com;proto=http\n",
        "version: HTTP/1.1\n",
    ] {
        assert!(body.contains(line), "{line:?} in {body}");
    }
    let (status, again, _) = read(h2_get(&mut send, "/").await).await;
    assert_eq!(
        (status, again),
        (StatusCode::OK, conn),
        "the connection kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_endpoint_passes_the_request_on() {
    let g = raw_gateway().await;
    let (gw, act, addr) = (&g.gw, &g.act, g.addr);
    // Nothing listens there any more.
    let gone = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let live = TestBackend::start("live", true).await;
    // The gateway's endpoint refuses: the activator takes the request, and sends it on.
    gw.set_revision(NS, REV, Mode::Serve, vec![gone], false);
    act.set_backends(NS, REV, vec![live.addr]);
    let mut send = h2(addr).await;
    let (status, _, body) = read(h2_get(&mut send, "/").await).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "live"));

    // The activator's backend that passed its probe and then went away: the request is
    // retried on the other (containerConcurrency 1: lowest address first).
    act.set_revision(
        NS,
        REV,
        RevisionParams {
            container_concurrency: 1,
            ..RevisionParams::default()
        },
    );
    let other = TestBackend::start("other", true).await;
    let (low, high) = if live.addr < other.addr {
        (live, other)
    } else {
        (other, live)
    };
    gw.set_revision(NS, REV, Mode::Proxy, vec![], false);
    act.set_backends(NS, REV, vec![low.addr, high.addr]);
    wait_until(|| act.ready_backends(NS, REV).len() == 2).await;
    low.kill().await;
    let (status, _, body) = read(h2_get(&mut send, "/").await).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, high.name));
    assert_eq!(act.ready_backends(NS, REV), vec![high.addr]);
}

#[tokio::test]
async fn an_endpoint_that_leaves_takes_its_connections() {
    let g = raw_gateway().await;
    let (gw, act, addr) = (&g.gw, &g.act, g.addr);
    let (a, b) = (
        TestBackend::start("a", true).await,
        TestBackend::start("b", true).await,
    );
    let mut send = h2(addr).await;

    // The gateway's endpoint.
    gw.set_revision(NS, REV, Mode::Serve, vec![a.addr], false);
    let (_, _, body) = read(h2_get(&mut send, "/").await).await;
    assert_eq!(body, "a");
    assert_eq!(a.open(), 1, "kept alive");
    gw.set_revision(NS, REV, Mode::Serve, vec![b.addr], false);
    wait_until(|| a.open() == 0).await;
    let (_, _, body) = read(h2_get(&mut send, "/").await).await;
    assert_eq!(body, "b");

    // The activator's backend (the probes' connections are not kept).
    let c = TestBackend::start("c", true).await;
    gw.set_revision(NS, REV, Mode::Proxy, vec![], false);
    act.set_backends(NS, REV, vec![c.addr]);
    let (_, _, body) = read(h2_get(&mut send, "/").await).await;
    assert_eq!(body, "c");
    wait_until(|| c.open() == 1).await;
    act.set_backends(NS, REV, vec![b.addr]);
    wait_until(|| c.open() == 0).await;
    let (_, _, body) = read(h2_get(&mut send, "/").await).await;
    assert_eq!(body, "b");
}
