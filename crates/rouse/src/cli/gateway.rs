//! Where the gateway listens, so the URLs the CLI shows a person work from this machine.
//! Status URLs stay Knative-shaped (`http://hello.default.localhost`); `rouse serve` announces
//! its gateway address on the API's `/metrics` as `rouse_gateway_info{address="IP:PORT"} 1`
//! (an info metric, so the API's routes stay Kubernetes-shaped), and the CLI adds the port to
//! the URLs it prints when it is not 80.

use bytes::Bytes;
use http::Method;

use super::client::ApiClient;

/// The metric `rouse serve` announces its gateway address with.
pub const GATEWAY_INFO_METRIC: &str = "rouse_gateway_info";

/// The gateway's address as the API announces it, `None` when it does not (an older server,
/// or the metrics unavailable): URLs are then shown as they are.
pub async fn gateway_port(client: &ApiClient) -> Option<u16> {
    let (code, body) = client
        .raw(Method::GET, "/metrics", None, Bytes::new())
        .await
        .ok()?;
    if !code.is_success() {
        return None;
    }
    port_from_metrics(&String::from_utf8_lossy(&body))
}

/// Finds `rouse_gateway_info{address="IP:PORT"} 1` in Prometheus text.
pub fn port_from_metrics(text: &str) -> Option<u16> {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{GATEWAY_INFO_METRIC}{{")))?;
    let addr = line.split("address=\"").nth(1)?.split('"').next()?;
    addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
}

/// `url` as a person can use it: with `:port` after the host when the gateway is not on 80.
/// Left alone when it has a port already, is not `http://`, or the port is unknown.
pub fn display_url(url: &str, port: Option<u16>) -> String {
    let (Some(port), Some(rest)) = (port, url.strip_prefix("http://")) else {
        return url.to_string();
    };
    if port == 80 {
        return url.to_string();
    }
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if host.is_empty() || host.contains(':') {
        return url.to_string();
    }
    format!("http://{host}:{port}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_gateway_port_in_metrics() {
        let text =
            "# HELP rouse_up x\nrouse_up 1\nrouse_gateway_info{address=\"127.0.0.1:8080\"} 1\n";
        assert_eq!(port_from_metrics(text), Some(8080));
        assert_eq!(
            port_from_metrics("rouse_gateway_info{address=\"[::1]:9\"} 1"),
            Some(9)
        );
        assert_eq!(port_from_metrics("rouse_up 1\n"), None);
    }

    #[test]
    fn urls_get_the_port_unless_80() {
        let u = "http://hello.default.localhost";
        assert_eq!(
            display_url(u, Some(8080)),
            "http://hello.default.localhost:8080"
        );
        assert_eq!(display_url(u, Some(80)), u);
        assert_eq!(display_url(u, None), u);
        assert_eq!(
            display_url("http://h.localhost/x", Some(8080)),
            "http://h.localhost:8080/x"
        );
        assert_eq!(
            display_url("http://h.localhost:9/", Some(8080)),
            "http://h.localhost:9/"
        );
        assert_eq!(display_url("", Some(8080)), "");
    }
}
