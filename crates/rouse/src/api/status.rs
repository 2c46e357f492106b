//! API failures as Kubernetes `Status` objects (`kind: Status`, `status: Failure`, a reason, the
//! HTTP code and a message), so Kubernetes-aware clients read them as they read kubectl's.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use rouse_api::Kind;
use rouse_store::StoreError;
use serde_json::{Value, json};

use super::paths::resource_name;

/// A failed request: the HTTP code, the Kubernetes reason and a human message.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status code.
    pub code: StatusCode,
    /// Kubernetes' `StatusReason`, e.g. `NotFound`, `Invalid`.
    pub reason: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// `details` of the Status (the object's name, group and kind), when one object is concerned.
    pub details: Option<Value>,
    /// For a 405: the methods the path does take (the `Allow` header).
    pub allow: Option<&'static str>,
}

impl ApiError {
    /// A new error.
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
            allow: None,
        }
    }

    /// 400: the request itself is unusable (malformed body, unknown field, wrong kind).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 404 for a path that names nothing the API serves.
    pub fn unknown_path() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 405 for a method the path does not take; `allow` lists those it does.
    pub fn method_not_allowed(allow: &'static str, message: impl Into<String>) -> Self {
        let mut err = Self::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message);
        err.allow = Some(allow);
        err
    }

    /// 409 Conflict: a stale resourceVersion or uid.
    pub fn conflict(kind: Kind, name: &str, why: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                resource_name(kind)
            ),
        )
        .for_object(kind, name)
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// Names the object concerned in `details`.
    pub fn for_object(mut self, kind: Kind, name: &str) -> Self {
        let mut details = json!({"group": kind.group(), "kind": kind.plural()});
        if !name.is_empty() {
            details["name"] = Value::String(name.to_string());
        }
        self.details = Some(details);
        self
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }

    /// The HTTP response carrying the `Status`.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut resp = json_response(self.code, &self.to_status());
        if self.code == StatusCode::REQUEST_TIMEOUT {
            // The rest of a slow body is not waited for: the connection ends with the answer.
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        if let Some(allow) = self.allow {
            resp.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static(allow));
        }
        resp
    }

    /// Maps a store failure for `kind`/`name` to its Kubernetes status.
    pub fn from_store(err: StoreError, kind: Kind, name: &str) -> Self {
        let message = err.to_string();
        let (code, reason) = match err {
            StoreError::NotFound { .. } => (StatusCode::NOT_FOUND, "NotFound"),
            StoreError::AlreadyExists { .. } => (StatusCode::CONFLICT, "AlreadyExists"),
            StoreError::Conflict { .. } => (StatusCode::CONFLICT, "Conflict"),
            StoreError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
            StoreError::Expired { .. } => (StatusCode::GONE, "Expired"),
            StoreError::Backend(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        };
        let mut err = Self::new(code, reason, message).for_object(kind, name);
        if reason == "Invalid"
            && let Some((field, why)) = err.message.split_once(": ")
            && !field.contains(' ')
            && let Some(d) = err.details.as_mut()
        {
            // "metadata.finalizers: Forbidden: ...": kubectl prints the cause with its field.
            d["kind"] = json!(kind.name());
            d["causes"] = json!([{"reason": "FieldValueInvalid", "message": why, "field": field}]);
        }
        err
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

/// A JSON response.
pub fn json_response(code: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).expect("JSON values serialize");
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .expect("static response parts are valid")
}

/// A plain-text response.
pub fn text_response(code: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_kubernetes_codes() {
        let nf = ApiError::from_store(
            StoreError::NotFound {
                kind: Kind::Service,
                namespace: "default".into(),
                name: "x".into(),
            },
            Kind::Service,
            "x",
        );
        assert_eq!(nf.code, StatusCode::NOT_FOUND);
        let s = nf.to_status();
        assert_eq!(s["kind"], "Status");
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["code"], 404);
        assert_eq!(s["message"], "services.serving.knative.dev \"x\" not found");
        assert_eq!(s["details"]["name"], "x");
        assert_eq!(s["details"]["kind"], "services");
        let ae = ApiError::from_store(
            StoreError::AlreadyExists {
                kind: Kind::Route,
                namespace: "default".into(),
                name: "x".into(),
            },
            Kind::Route,
            "x",
        );
        assert_eq!(
            (ae.code, ae.reason),
            (StatusCode::CONFLICT, "AlreadyExists")
        );
        let be = ApiError::from_store(StoreError::Backend("disk".into()), Kind::Route, "x");
        assert_eq!(be.code, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn refusals_carry_their_allowed_methods_and_field_causes() {
        let resp = ApiError::method_not_allowed("GET, PUT, PATCH", "no").into_response();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[header::ALLOW], "GET, PUT, PATCH");
        let forbidden = ApiError::from_store(
            StoreError::Invalid("metadata.finalizers: Forbidden: no new finalizers".into()),
            Kind::Service,
            "x",
        )
        .to_status();
        assert_eq!(forbidden["details"]["kind"], "Service");
        assert_eq!(
            forbidden["details"]["causes"][0],
            json!({"reason": "FieldValueInvalid", "message": "Forbidden: no new finalizers",
                   "field": "metadata.finalizers"})
        );
    }
}
