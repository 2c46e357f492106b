//! Image tag → digest resolution against a real HTTPS registry on loopback: the digest from
//! HEAD, from GET's hash when the registry sends no digest header, Basic and bearer-token
//! authentication with credentials from image pull Secrets read through the (fake) API server,
//! a missing tag as Knative's `ContainerMissing` message, skipped registries, the timeout,
//! and an untrusted certificate.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rouse_kube::digest::{PullSecrets, Resolver, TagResolution};
use rouse_kube::registry::{Credential, ImageRef, RegistryClient};
use rouse_runtime::ImageState;
use serde_json::json;

mod common;

use common::fake::Fake;
use common::registry::{Auth, TestRegistry};

const MANIFEST: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;

fn creds(user: &str, pass: &str) -> Credential {
    Credential::Basic {
        username: user.into(),
        password: pass.into(),
    }
}

#[tokio::test]
async fn a_tag_resolves_to_the_digest_through_the_token_flow() {
    let reg = TestRegistry::start().await;
    let digest = reg.push("team/app:v1", MANIFEST);
    reg.set_auth(Auth::Bearer(Some(("puller".into(), "s3cret".into()))));
    let image = ImageRef::parse(&format!("{}/team/app:v1", reg.host())).unwrap();

    let got = reg
        .client()
        .digest(&image, Some(&creds("puller", "s3cret")))
        .await
        .unwrap();
    assert_eq!(got, format!("{}/team/app@{digest}", reg.host()));
    let seen = reg.seen();
    let summary: Vec<(&str, &str, bool)> = seen
        .iter()
        .map(|(m, p, a)| (m.as_str(), p.split('?').next().unwrap(), a.is_some()))
        .collect();
    assert_eq!(
        summary,
        [
            ("HEAD", "/v2/team/app/manifests/v1", false),
            ("GET", "/token", true),
            ("HEAD", "/v2/team/app/manifests/v1", true),
        ]
    );
    // The token request names the service and scope from the challenge.
    assert!(
        seen[1]
            .1
            .ends_with("?service=test-registry&scope=repository%3Ateam%2Fapp%3Apull"),
        "{}",
        seen[1].1
    );
    assert!(seen[1].2.as_deref().unwrap().starts_with("Basic "));
    assert_eq!(seen[2].2.as_deref(), Some("Bearer t0ken-for-the-test"));

    // Wrong credentials: the token service's refusal, in its words.
    let err = reg
        .client()
        .digest(&image, Some(&creds("puller", "wrong")))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/token?") && err.contains("UNAUTHORIZED: bad credentials"),
        "{err}"
    );
}

#[tokio::test]
async fn basic_auth_anonymous_tokens_and_hashing_the_manifest() {
    let reg = TestRegistry::start().await;
    let digest = reg.push("app:latest", MANIFEST);
    let image = ImageRef::parse(&format!("{}/app", reg.host())).unwrap();

    reg.set_auth(Auth::Basic("u".into(), "p".into()));
    let err = reg
        .client()
        .digest(&image, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("asks for a user name and password"), "{err}");
    let got = reg
        .client()
        .digest(&image, Some(&creds("u", "p")))
        .await
        .unwrap();
    assert_eq!(got, format!("{}/app@{digest}", reg.host()));

    // An anonymous token; no digest header anywhere, so the manifest's own sha256.
    reg.set_auth(Auth::Bearer(None));
    reg.state.lock().unwrap().without_digest_header = true;
    let got = reg.client().digest(&image, None).await.unwrap();
    assert_eq!(got, format!("{}/app@{digest}", reg.host()));
    let last: Vec<String> = reg
        .seen()
        .iter()
        .rev()
        .take(2)
        .map(|s| s.0.clone())
        .collect();
    assert_eq!(last, ["GET", "HEAD"]);
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    let reg = TestRegistry::start().await;
    reg.push("app:latest", MANIFEST);
    let other = TestRegistry::start().await;
    let image = ImageRef::parse(&format!("{}/app", reg.host())).unwrap();
    let err = other
        .client()
        .digest(&image, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "HEAD https://{}/v2/app/manifests/latest:",
            reg.host()
        )),
        "{err}"
    );
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

/// The resolver with its Secrets read from a fake API server.
async fn resolver(fake: &Fake, registry: RegistryClient, settings: TagResolution) -> Arc<Resolver> {
    let r = Arc::new(Resolver::new(fake.client.clone(), Ok(registry)));
    r.set_settings(settings);
    r
}

/// Resolves `image` for revision shop/rev and waits for the answer.
async fn resolve(r: &Arc<Resolver>, image: &str, pull: PullSecrets) -> ImageState {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let key = ("shop".to_string(), "rev".to_string());
    let first = r.state(
        key.clone(),
        image,
        || pull,
        &tokio::runtime::Handle::current(),
        move || {
            let _ = tx.send(());
        },
    );
    if first != ImageState::Resolving {
        return first;
    }
    tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .expect("the resolution ends")
        .unwrap();
    let again = r.state(
        key,
        image,
        PullSecrets::default,
        &tokio::runtime::Handle::current(),
        || {},
    );
    assert_ne!(again, ImageState::Resolving);
    again
}

#[tokio::test]
async fn credentials_come_from_the_revisions_and_its_service_accounts_pull_secrets() {
    let reg = TestRegistry::start().await;
    let digest = reg.push("team/app:v1", MANIFEST);
    reg.set_auth(Auth::Bearer(Some(("puller".into(), "s3cret".into()))));
    let fake = Fake::start().await;
    let config = |user: &str, pass: &str| {
        let json = json!({"auths": {reg.host(): {"username": user, "password": pass}}}).to_string();
        base64::engine::general_purpose::STANDARD.encode(json)
    };
    // The revision's own Secret has the wrong password; the ServiceAccount's the right one.
    // The revision's comes first, so only once it is gone does the right one match.
    fake.put(
        "api/v1/secrets",
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
               "metadata": {"name": "wrong", "namespace": "shop"},
               "data": {".dockerconfigjson": config("puller", "nope")}}),
    );
    fake.put(
        "api/v1/secrets",
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
               "metadata": {"name": "right", "namespace": "shop"},
               "data": {".dockerconfigjson": config("puller", "s3cret")}}),
    );
    fake.put(
        "api/v1/serviceaccounts",
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "builder", "namespace": "shop"},
               "imagePullSecrets": [{"name": "right"}]}),
    );
    let image = format!("{}/team/app:v1", reg.host());
    let r = resolver(&fake, reg.client(), TagResolution::default()).await;
    let pull = |secrets: &[&str]| PullSecrets {
        secrets: secrets.iter().map(|s| s.to_string()).collect(),
        service_account: "builder".into(),
    };
    let state = resolve(&r, &image, pull(&["wrong", "missing"])).await;
    let ImageState::Failed { reason, message } = state else {
        panic!("{state:?}")
    };
    assert_eq!(reason, "ContainerMissing");
    assert!(
        message.starts_with(&format!(
            "Unable to fetch image \"{image}\": failed to resolve image to digest: GET https://"
        )) && message.ends_with("UNAUTHORIZED: bad credentials"),
        "{message}"
    );
    r.forget(&("shop".into(), "rev".into()));
    // A Secret that does not exist is skipped, as the kubelet skips it.
    let state = resolve(&r, &image, pull(&["missing"])).await;
    assert_eq!(
        state,
        ImageState::Resolved(format!("{}/team/app@{digest}", reg.host()))
    );
    assert_eq!(
        r.resolved(&("shop".into(), "rev".into())),
        Some(format!("{}/team/app@{digest}", reg.host()))
    );
}

#[tokio::test]
async fn missing_tags_skipped_registries_pinned_images_and_the_timeout() {
    let reg = TestRegistry::start().await;
    let fake = Fake::start().await;
    let image = format!("{}/team/app:v9", reg.host());

    // A tag the registry does not have: Knative's reason and message, the registry's words.
    let r = resolver(&fake, reg.client(), TagResolution::default()).await;
    let state = resolve(&r, &image, PullSecrets::default()).await;
    assert_eq!(
        state,
        ImageState::Failed {
            reason: "ContainerMissing".into(),
            message: format!(
                "Unable to fetch image \"{image}\": failed to resolve image to digest: GET \
                 https://{}/v2/team/app/manifests/v9: MANIFEST_UNKNOWN: manifest unknown",
                reg.host()
            ),
        }
    );

    // A skipped registry, and an image pinned by digest, answer at once, asking nobody.
    let asked = reg.seen().len();
    let skip = TagResolution {
        skip: [reg.host(), "docker.io".to_string()].into_iter().collect(),
        ..TagResolution::default()
    };
    let r = resolver(&fake, reg.client(), skip).await;
    assert_eq!(
        r.immediate(&image),
        Some(ImageState::Resolved(String::new()))
    );
    assert_eq!(
        r.immediate("nginx:1.27"),
        Some(ImageState::Resolved(String::new()))
    );
    let pinned = format!("ghcr.io/x/app@sha256:{}", "ab".repeat(32));
    assert_eq!(
        r.immediate(&pinned),
        Some(ImageState::Resolved(pinned.clone()))
    );
    assert_eq!(r.immediate("ghcr.io/x/app:v1"), None);
    let ImageState::Failed { message, .. } = r.immediate("Not An Image").unwrap() else {
        panic!()
    };
    assert!(message.contains("could not parse reference"), "{message}");
    assert_eq!(reg.seen().len(), asked);

    // A registry that never answers: the resolution gives up at the timeout.
    reg.state.lock().unwrap().stall = true;
    let quick = TagResolution {
        timeout: Duration::from_millis(300),
        ..TagResolution::default()
    };
    let r = resolver(&fake, reg.client(), quick).await;
    let started = std::time::Instant::now();
    let state = resolve(&r, &image, PullSecrets::default()).await;
    let ImageState::Failed { message, .. } = state else {
        panic!("{state:?}")
    };
    assert!(
        message.ends_with("timed out after 300ms (config-deployment digest-resolution-timeout)"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_failure_is_tried_again_and_shown_until_the_retry_ends() {
    let reg = TestRegistry::start().await;
    let fake = Fake::start().await;
    let image = format!("{}/team/app:late", reg.host());
    let r = Arc::new(
        Resolver::new(fake.client.clone(), Ok(reg.client()))
            .with_retry_after(Duration::from_millis(50)),
    );
    let failed = resolve(&r, &image, PullSecrets::default()).await;
    assert!(matches!(failed, ImageState::Failed { .. }), "{failed:?}");

    // The tag appears: a later look starts a retry, which shows the failure until it ends.
    let digest = reg.push("team/app:late", MANIFEST);
    let key = ("shop".to_string(), "rev".to_string());
    let handle = tokio::runtime::Handle::current();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let resolved = loop {
        let state = r.state(key.clone(), &image, PullSecrets::default, &handle, || {});
        assert_ne!(
            state,
            ImageState::Resolving,
            "a retry shows the last failure"
        );
        if let ImageState::Resolved(d) = state {
            break d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never resolved: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(resolved, format!("{}/team/app@{digest}", reg.host()));
}
