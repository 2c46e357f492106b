//! DomainMapping end to end through the real `rouse serve`: a custom domain served by a Knative
//! Service (the app sees its own host), the domain's claim held by one namespace at a time and
//! handed over when its holder goes, an unresolvable reference reported, and a deleted mapping
//! leaving the domain unknown.

mod common;

use common::*;

const HELLO: &str = "Hello World! How about some tasty noodles?";
const DOMAIN: &str = "app.example.org";

fn mapping(namespace: &str, domain: &str, service: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1beta1\nkind: DomainMapping\nmetadata:\n  name: {domain}\n  namespace: {namespace}\nspec:\n  ref:\n    kind: Service\n    name: {service}\n    apiVersion: serving.knative.dev/v1\n"
    )
}

fn in_namespace(manifest: &str, namespace: &str) -> String {
    manifest.replacen(
        "metadata:\n",
        &format!("metadata:\n  namespace: {namespace}\n"),
        1,
    )
}

fn get_in(p: &Platform, namespace: &str, kind: &str, name: &str) -> Option<serde_json::Value> {
    let out = p.cli(&["-n", namespace, "get", kind, name, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

fn condition(obj: &serde_json::Value, type_: &str) -> (String, String, String) {
    let c = obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .cloned()
        .unwrap_or_default();
    let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
    (s("status"), s("reason"), s("message"))
}

#[test]
fn a_domain_mapping_serves_its_domain_and_one_namespace_holds_it() {
    let p = Platform::start();
    let marker = unique_marker("domainmapping");
    p.apply_wait(&service_yaml("hello", &marker, &[]));
    p.apply_wait(&in_namespace(
        &service_yaml("hello", &marker, &[("MESSAGE", "other namespace")]),
        "other",
    ));

    // Mapped: the domain answers with the Service's app, which sees the route's own host.
    let out = p.apply_wait(&mapping("default", DOMAIN, "hello"));
    assert!(out.contains("is Ready"), "{out}");
    let r = p.http_get(DOMAIN, "/").unwrap();
    assert_eq!((r.status, r.body.trim()), (200, HELLO), "{r:?}");
    let r = p.http_get("App.Example.org:8080", "/headers").unwrap();
    let headers: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(headers["host"], "hello.default.localhost", "{headers}");
    assert!(
        headers["headers"]["forwarded"]
            .as_str()
            .unwrap_or("")
            .contains("host=\"App.Example.org:8080\""),
        "{headers}"
    );
    let dm = p.get_json("dm", DOMAIN).unwrap();
    assert_eq!(dm["status"]["url"], format!("http://{DOMAIN}"));
    assert_eq!(dm["spec"]["ref"]["namespace"], "default");
    for c in [
        "DomainClaimed",
        "ReferenceResolved",
        "IngressReady",
        "CertificateProvisioned",
        "Ready",
    ] {
        assert_eq!(condition(&dm, c).0, "True", "{c}: {dm}");
    }
    let table = p.cli_ok(&["get", "dm"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("URL") && table.contains("REASON"), "{table}");
    // The URL as the CLI prints every URL: with the gateway's port.
    let port = p.gateway.port();
    assert!(
        table.contains(&format!("{DOMAIN}   http://{DOMAIN}:{port}   True")),
        "{table}"
    );

    let described = p.cli_ok(&["describe", "dm", DOMAIN]);
    assert!(described.contains("Service default/hello"), "{described}");

    // The same domain in another namespace: the claim is taken.
    let out = p.apply(&mapping("other", DOMAIN, "hello"), &[]);
    assert!(out.status.success(), "{out:?}");
    let rival = eventually("the rival's claim refused", PATIENCE, || {
        let dm = get_in(&p, "other", "dm", DOMAIN)?;
        (condition(&dm, "DomainClaimed").0 == "False").then_some(dm)
    });
    assert_eq!(
        condition(&rival, "DomainClaimed"),
        (
            "False".to_string(),
            "DomainAlreadyClaimed".to_string(),
            "The domain name is already in use by another DomainMapping".to_string()
        )
    );
    assert_eq!(condition(&rival, "Ready").1, "DomainAlreadyClaimed");
    let r = p.http_get(DOMAIN, "/").unwrap();
    assert_eq!(r.body.trim(), HELLO, "the holder still serves the domain");

    // A mapping to a Service that does not exist says so.
    p.apply(&mapping("default", "missing.example.org", "nope"), &[]);
    let missing = eventually("the unresolved reference reported", PATIENCE, || {
        let dm = p.get_json("dm", "missing.example.org")?;
        (condition(&dm, "ReferenceResolved").0 == "False").then_some(dm)
    });
    assert_eq!(
        condition(&missing, "ReferenceResolved"),
        (
            "False".to_string(),
            "ResolveFailed".to_string(),
            "services.serving.knative.dev \"nope\" not found".to_string()
        )
    );
    assert_eq!(p.http_get("missing.example.org", "/").unwrap().status, 404);

    // A mapping named like another namespace's route host cannot take its traffic.
    p.apply(&mapping("other", "hello.default.localhost", "hello"), &[]);
    let shadowed = eventually("the hijacking mapping refused", PATIENCE, || {
        let dm = get_in(&p, "other", "dm", "hello.default.localhost")?;
        (condition(&dm, "DomainClaimed").0 == "False").then_some(dm)
    });
    assert_eq!(
        condition(&shadowed, "DomainClaimed").2,
        "The domain name is the host of Route default/hello"
    );
    let r = p.http_get("hello.default.localhost", "/").unwrap();
    assert_eq!((r.status, r.body.trim()), (200, HELLO));
    // Mapped first, the route created later: the route takes its host back.
    p.apply_wait(&mapping("other", "late.default.localhost", "hello"));
    let r = p.http_get("late.default.localhost", "/").unwrap();
    assert_eq!(r.body.trim(), "other namespace");
    p.apply_wait(&service_yaml("late", &marker, &[]));
    eventually("the late route's own host served", PATIENCE, || {
        let r = p.http_get("late.default.localhost", "/").ok()?;
        (r.body.trim() == HELLO).then_some(())
    });
    eventually(
        "the mapping of the late route's host refused",
        PATIENCE,
        || {
            let dm = get_in(&p, "other", "dm", "late.default.localhost")?;
            (condition(&dm, "DomainClaimed").1 == "DomainAlreadyClaimed").then_some(())
        },
    );

    // Deleting the holder hands the domain to the other namespace's mapping.
    p.cli_ok(&["delete", "dm", DOMAIN]);
    eventually(
        "the domain served from the other namespace",
        PATIENCE,
        || {
            let r = p.http_get(DOMAIN, "/").ok()?;
            (r.status == 200 && r.body.trim() == "other namespace").then_some(())
        },
    );
    eventually("the rival holds the claim", PATIENCE, || {
        let dm = get_in(&p, "other", "dm", DOMAIN)?;
        (condition(&dm, "Ready").0 == "True").then_some(())
    });

    // Deleted: the domain is unknown again, while the Service keeps its own host.
    p.cli_ok(&["-n", "other", "delete", "dm", DOMAIN]);
    eventually("the domain unknown", PATIENCE, || {
        (p.http_get(DOMAIN, "/").ok()?.status == 404).then_some(())
    });
    assert_eq!(
        p.http_get("hello.default.localhost", "/").unwrap().status,
        200
    );
}

#[test]
fn invalid_domain_mappings_are_refused_with_knatives_messages() {
    let p = Platform::start();
    let out = p.apply(&mapping("default", "localhost", "hello"), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid name \"localhost\": name: Invalid value: \"localhost\": should be a domain with at least two segments separated by dots: metadata.name"),
        "{err}"
    );
    let cross = mapping("default", DOMAIN, "hello").replace(
        "    name: hello\n",
        "    name: hello\n    namespace: other\n",
    );
    let out = p.apply(&cross, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mismatched namespaces: spec.ref.namespace"),
        "{err}"
    );
    assert!(p.get_json("dm", DOMAIN).is_none());
}
