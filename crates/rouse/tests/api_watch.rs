//! The watch protocol of the real API server (in process, over a real socket, on an embedded
//! store with a short history): events from a resourceVersion, the initial ADDED events, the
//! `metadata.name` field selector, Tables in watches, and `410 Expired` once history is gone.

use std::sync::Arc;
use std::time::Duration;

use rouse::api::{ApiState, serve_api};
use rouse_api::Kind;
use rouse_store::{EmbeddedStore, Store};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SVCS: &str = "/apis/serving.knative.dev/v1/namespaces/default/services";

fn svc(name: &str) -> Value {
    json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "default"}, "spec": {}})
}

/// Opens a watch and returns the stream once the head has arrived.
async fn open(addr: std::net::SocketAddr, token: &str, path: &str, accept: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nAccept: {accept}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

/// Reads until `want` is in what arrived (bounded), returning everything read.
async fn read_until(s: &mut TcpStream, seen: &mut String, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 8192];
    while !seen.contains(want) {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {want:?} within 20s; got:\n{seen}"))
            .unwrap();
        assert!(n > 0, "closed before {want:?}; got:\n{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_resource_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open_with_history(dir.path(), 4).unwrap());
    let token = rouse::api::auth::load_or_create_token(dir.path()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = ApiState {
        store: store.clone(),
        config: Default::default(),
        configmaps: Default::default(),
        namespaces: Default::default(),
        token: token.clone().into(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_api(listener, state, Arc::new(String::new), async {
        let _ = stopped.await;
    }));

    let first = store.create(Kind::Service, svc("a")).unwrap();
    let first_rv = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    for n in ["b", "c", "d", "e", "f"] {
        store.create(Kind::Service, svc(n)).unwrap();
    }

    // History holds 4 events: a watch from before them is told 410 Expired, in the stream.
    let mut old = open(
        addr,
        &token,
        &format!("{SVCS}?watch=1&resourceVersion={first_rv}"),
        "application/json",
    )
    .await;
    let mut seen = String::new();
    read_until(&mut old, &mut seen, "\"type\":\"ERROR\"").await;
    read_until(&mut old, &mut seen, "\"code\":410").await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");

    // Without a resourceVersion: the current objects as ADDED, then changes, only those named.
    let mut w = open(
        addr,
        &token,
        &format!("{SVCS}?watch=true&fieldSelector=metadata.name%3Db"),
        "application/json",
    )
    .await;
    let mut seen = String::new();
    read_until(&mut w, &mut seen, "\"type\":\"ADDED\"").await;
    assert!(seen.contains("\"name\":\"b\""), "{seen}");
    assert!(!seen.contains("\"name\":\"a\""), "{seen}");
    let mut a = store.get(Kind::Service, "default", "a").unwrap();
    a["metadata"]["labels"] = json!({"x": "1"});
    store.update(Kind::Service, a).unwrap();
    let mut b = store.get(Kind::Service, "default", "b").unwrap();
    b["metadata"]["labels"] = json!({"x": "2"});
    store.update(Kind::Service, b).unwrap();
    read_until(&mut w, &mut seen, "\"type\":\"MODIFIED\"").await;
    assert!(seen.contains("\"x\":\"2\""), "{seen}");
    assert!(!seen.contains("\"x\":\"1\""), "{seen}");

    // kubectl's Table watch: each event's object is a one-row Table.
    let rv = store.resource_version();
    let mut t = open(
        addr,
        &token,
        &format!("{SVCS}?watch=1&resourceVersion={rv}"),
        "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
    )
    .await;
    let mut seen = String::new();
    store.delete(Kind::Service, "default", "c").unwrap();
    read_until(&mut t, &mut seen, "\"type\":\"DELETED\"").await;
    assert!(seen.contains("\"kind\":\"Table\""), "{seen}");
    assert!(seen.contains("\"cells\":[\"c\""), "{seen}");

    // Shutdown ends open watches: the server stops well within its 10 s drain period, and
    // the watch's stream ends.
    drop(old);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(8), server)
        .await
        .expect("open watches ended at shutdown")
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), t.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the watch stream ended");
    drop(w);
}
