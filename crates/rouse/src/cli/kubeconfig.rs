//! `rouse kubeconfig`: a kubeconfig for this API, so kubectl (and client libraries) can talk to
//! it with the same token the CLI uses.

use serde_json::json;

use super::ApiTarget;

/// `rouse kubeconfig` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct KubeconfigArgs {
    #[command(flatten)]
    pub target: ApiTarget,
}

/// The kubeconfig (YAML) naming the API at `api` with `token`, in namespace `namespace`; for an
/// `https://` API, `ca_pem` is the CA its certificate is verified against.
pub fn render(
    api: &str,
    token: &str,
    namespace: &str,
    ca_pem: Option<&[u8]>,
) -> anyhow::Result<String> {
    use base64::Engine as _;
    let server = api.trim_end_matches('/');
    let mut cluster = json!({"server": server});
    if server.starts_with("https://") {
        let Some(ca) = ca_pem else {
            anyhow::bail!(
                "no CA for {api}: set ROUSE_CA_FILE or point --data-dir at `rouse serve --tls`'s data dir"
            );
        };
        cluster["certificate-authority-data"] =
            json!(base64::engine::general_purpose::STANDARD.encode(ca));
    } else if !server.starts_with("http://") {
        anyhow::bail!("invalid API URL {api:?}: expected http://HOST:PORT or https://HOST:PORT");
    }
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "rouse", "cluster": cluster}],
        "users": [{"name": "rouse", "user": {"token": token}}],
        "contexts": [{
            "name": "rouse",
            "context": {"cluster": "rouse", "user": "rouse", "namespace": namespace},
        }],
        "current-context": "rouse",
        "preferences": {},
    });
    Ok(rouse_api::decode::to_yaml(&config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_kubeconfig() {
        let text = render("http://127.0.0.1:8081/", "t0k", "ns1", None).unwrap();
        let v = &rouse_api::decode::parse_documents(&text).unwrap()[0];
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "http://127.0.0.1:8081"
        );
        assert_eq!(v["users"][0]["user"]["token"], "t0k");
        assert_eq!(v["contexts"][0]["context"]["namespace"], "ns1");
        assert_eq!(v["current-context"], "rouse");
        assert!(render("127.0.0.1:8081", "t", "default", None).is_err());
        assert!(render("https://127.0.0.1:8081", "t", "default", None).is_err());
        let text = render("https://127.0.0.1:8081", "t", "default", Some(b"PEM")).unwrap();
        let v = &rouse_api::decode::parse_documents(&text).unwrap()[0];
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"],
            "UEVN"
        );
    }
}
