//! The OpenAPI description (`docs/openapi.yaml`): served by the target as the repository has
//! it, rendered by the API reference page under the site's CSP, and a checker that catches
//! drift (`openapi.rs`; every trial's answers go through it, `openapi_proxy.rs`).

use e2e_tests::openapi::{Answer, Checked, Checker};
use e2e_tests::*;
use serde_json::{Value, json};

/// `/api/openapi.json` is the repository's document (converted from YAML by an independent
/// run of the `yaml` package), with a cache policy; its version is the server's.
pub async fn the_openapi_document_is_served_as_the_repository_has_it(s: &Server) {
    let resp = get(s.http("/api/openapi.json")).await.expect("GET openapi");
    assert_eq!(resp.status(), 200);
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(header("content-type").starts_with("application/json"));
    assert_eq!(header("cache-control"), "public, max-age=300");
    let served: Value = resp.json().await.expect("JSON");
    let out = tokio::process::Command::new("node")
        .args([
            "-e",
            "process.stdout.write(JSON.stringify(require('yaml').parse(require('fs').readFileSync('docs/openapi.yaml','utf8'))))",
        ])
        .current_dir(repo_root())
        .output()
        .await
        .expect("run node");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let repository: Value = serde_json::from_slice(&out.stdout).expect("YAML as JSON");
    assert!(
        served == repository,
        "/api/openapi.json differs from docs/openapi.yaml (run scripts/build-web)"
    );
    let version: Value = get(s.http("/api/version"))
        .await
        .expect("GET version")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        served["info"]["version"], version["version"],
        "info.version"
    );
    assert_eq!(
        served["info"]["x-protocol-version"], version["protocol"],
        "info.x-protocol-version"
    );
}

/// Real answers of the target pass the checker; each mutation of their shape (a required field
/// dropped, a type changed, an unknown error code, an undocumented status, content type, path
/// or method) is reported. And the same through the proxy: a server of the test's own that
/// answers a drifted shape fails the trial that received it.
pub async fn the_openapi_checker_catches_drift(s: &Server) {
    let checker = Checker::load();
    let version = answer(&checker, s, "GET", "/api/version", None).await;
    let guest = answer(
        &checker,
        s,
        "POST",
        "/api/auth/guest",
        Some(json!({"name": "Drift"})),
    )
    .await;
    let refusal = answer(&checker, s, "GET", "/api/users/me", None).await;
    assert_eq!(refusal.status, 401);

    let mutations: Vec<(&str, Real, Mutation)> = vec![
        (
            "a required field dropped",
            version.clone(),
            Box::new(|r| r.edit(|b| drop(b.as_object_mut().map(|o| o.remove("protocol"))))),
        ),
        (
            "a type changed",
            version.clone(),
            Box::new(|r| r.edit(|b| b["protocol"] = json!("2"))),
        ),
        (
            "a nested type changed",
            guest.clone(),
            Box::new(|r| r.edit(|b| b["user"]["roles"] = json!("guest"))),
        ),
        (
            "an unknown error code",
            refusal.clone(),
            Box::new(|r| r.edit(|b| b["error"]["code"] = json!("no_such_code"))),
        ),
        (
            "the error shape flattened",
            refusal.clone(),
            Box::new(|r| r.edit(|b| *b = json!({"error": "unauthorized"}))),
        ),
        (
            "an undocumented status",
            version.clone(),
            Box::new(|r| r.status = 418),
        ),
        (
            "an undocumented content type",
            version.clone(),
            Box::new(|r| r.headers = vec![("content-type".into(), "text/plain".into())]),
        ),
        (
            "a body that is not JSON",
            guest.clone(),
            Box::new(|r| r.body = b"<html>".to_vec()),
        ),
        (
            "an undocumented path answered",
            version.clone(),
            Box::new(|r| r.path = "/api/versions".into()),
        ),
        (
            "an undocumented method answered",
            version.clone(),
            Box::new(|r| r.method = "DELETE"),
        ),
    ];
    for (what, mut real, mutate) in mutations {
        mutate(&mut real);
        let found = checker.check(&real.answer());
        assert!(found.is_err(), "{what}: not reported ({found:?})");
        eprintln!(
            "drift caught ({what}): {:?}",
            found.err().unwrap_or_default()
        );
    }

    through_the_proxy().await;
}

/// A server of this test's own, registered as a target, answering `/api/version` with the
/// protocol as a string: the proxy records the drift under this trial (taken here, so the
/// trial passes only if it was).
async fn through_the_proxy() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    openapi_proxy::register(port, "drift-probe");
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let body = r#"{"name":"x","version":"0.1.0","protocol":"2","subprotocol":"p"}"#;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(format!("{head}{body}").as_bytes()).await;
        }
    });
    let resp = get(format!("http://127.0.0.1:{port}/api/version"))
        .await
        .expect("GET the drifted server");
    assert_eq!(resp.status(), 200, "the proxy returns the answer unchanged");
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(
        body["protocol"], "2",
        "the proxy returns the body unchanged"
    );
    server.abort();
    openapi_proxy::unregister(port);
    let trial = std::thread::current().name().unwrap_or_default().to_owned();
    let found = openapi_proxy::take_violations(&trial);
    assert!(
        found
            .iter()
            .any(|v| v.contains("drift-probe") && v.contains("protocol")),
        "the proxy did not report the drifted answer: {found:?}"
    );
}

/// The operations some target's other trials do not call answer as documented (the proxy
/// checks them): the
/// WebSocket entries refuse plain HTTP (426), and `/readyz` is the fallback's (the
/// edge has none: 404).
pub async fn the_rarely_called_operations_answer_as_documented(s: &Server) {
    for path in ["/mpp", "/api/rooms/lobby/ws"] {
        let plain = get(s.http(path)).await.expect("GET");
        assert_eq!(plain.status(), 426, "{path} without an upgrade");
    }
    let ready = get(s.http("/readyz")).await.expect("GET /readyz");
    match s.host {
        Host::Edge => assert_eq!(ready.status(), 404),
        _ => assert_eq!(ready.status(), 200),
    }
    // Answered here so every target covers them (what they answer depends on the target's
    // configuration: Redis, METRICS_TOKEN; the proxy checks it is documented).
    for path in [
        "/api/status",
        "/metrics",
        "/api/network/rooms",
        "/api/network/online",
    ] {
        get(s.http(path)).await.expect("GET");
    }
    let outbox = get(s.http("/api/admin/rooms/lobby/outbox"))
        .await
        .expect("GET outbox");
    match s.host {
        Host::Edge => assert_eq!(outbox.status(), 401, "an admin route without a token"),
        _ => assert_eq!(outbox.status(), 404, "the fallback has no outbox route"),
    }
}

/// The API reference page renders the document in Chromium under the site's security headers
/// (no CSP violation, no page error, every operation shown: tests/web/api_docs.mjs).
pub async fn the_api_reference_page_renders_under_the_sites_csp(s: &Server) {
    let operations = Checker::load().operations().len();
    let shots =
        crate::basics::run_browser_script_with("api_docs.mjs", s, &[operations.to_string()]).await;
    assert!(
        shots.join("api-docs.png").exists(),
        "api-docs.png was written"
    );
}

/// One change to a real answer's shape.
type Mutation = Box<dyn Fn(&mut Real)>;

/// A real answer, to mutate.
#[derive(Clone)]
struct Real {
    method: &'static str,
    path: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Real {
    fn answer(&self) -> Answer<'_> {
        Answer {
            method: self.method,
            path: &self.path,
            status: self.status,
            headers: &self.headers,
            body: &self.body,
        }
    }

    fn edit(&mut self, f: impl FnOnce(&mut Value)) {
        let mut v: Value = serde_json::from_slice(&self.body).expect("a JSON body");
        f(&mut v);
        self.body = v.to_string().into_bytes();
    }
}

/// Asks the target, and checks the unmutated answer passes.
async fn answer(
    checker: &Checker,
    s: &Server,
    method: &'static str,
    path: &str,
    body: Option<Value>,
) -> Real {
    let mut req = http().request(method.parse().expect("method"), s.http(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = resp.bytes().await.expect("body").to_vec();
    let real = Real {
        method,
        path: path.to_owned(),
        status,
        headers,
        body,
    };
    let checked = checker.check(&real.answer());
    assert!(
        matches!(checked, Ok(Checked::Operation(_))),
        "the real answer to {method} {path} passes: {checked:?}"
    );
    real
}
