//! The recording proxy in front of the targets: [`crate::http_builder`] sends every request of
//! every trial through it. It forwards each request unchanged (but for the trial's name, which
//! it takes off), checks the answer of a target against the OpenAPI document
//! ([`crate::openapi::Checker`]) and returns the answer unchanged. Answers of anything else the
//! trials talk to (the sign-in provider, the storage gateways, the report sink) pass unchecked.
//!
//! A violation is kept under the trial that received it: the harness fails that trial
//! ([`take_violations`]) and, at the end of the run, lists the ones no trial claimed and prints
//! what the answers covered of the document, per target ([`report`]).

use crate::openapi::{Answer, Checked, Checker};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, OnceLock};

/// The header naming the trial (its thread's name), taken off before the request goes on.
pub const TRIAL_HEADER: &str = "x-e2e-trial";
/// The largest answer the proxy reads whole to check (the API's answers are small).
const MAX_BODY: usize = 16 << 20;
const UNCLAIMED: &str = "(no trial)";

#[derive(Default)]
struct Record {
    /// Loopback ports of our own servers, and which target each is.
    ports: HashMap<u16, &'static str>,
    /// Violations by trial.
    violations: BTreeMap<String, Vec<String>>,
    /// Per target: the operations answered, and how many answers were checked.
    covered: BTreeMap<&'static str, BTreeSet<String>>,
    checked: BTreeMap<&'static str, u64>,
}

static RECORD: Mutex<Option<Record>> = Mutex::new(None);
static CHECKER: OnceLock<Checker> = OnceLock::new();

fn with_record<T>(f: impl FnOnce(&mut Record) -> T) -> T {
    let mut r = RECORD.lock().unwrap_or_else(|p| p.into_inner());
    f(r.get_or_insert_with(Record::default))
}

fn checker() -> &'static Checker {
    CHECKER.get_or_init(Checker::load)
}

/// Answers on `port` are `target`'s (edge, fallback, cluster), checked from now on.
pub fn register(port: u16, target: &'static str) {
    with_record(|r| r.ports.insert(port, target));
}

/// Answers on `port` are no longer checked (its server is gone: the port may be handed to
/// a mock of another trial next).
pub fn unregister(port: u16) {
    with_record(|r| r.ports.remove(&port));
}

/// The violations the answers to `trial` had (taken: each is reported once).
pub fn take_violations(trial: &str) -> Vec<String> {
    with_record(|r| r.violations.remove(trial).unwrap_or_default())
}

/// Prints what the checked answers covered of the document per target, and every violation
/// not yet taken; `false` if there was one.
pub fn report() -> bool {
    let Some(checker) = CHECKER.get() else {
        eprintln!("openapi: no answer of a target was checked");
        return true;
    };
    let all = checker.operations();
    with_record(|r| {
        for (target, ops) in &r.covered {
            let missing: Vec<&String> = all.iter().filter(|o| !ops.contains(*o)).collect();
            eprintln!(
                "openapi: {target}: {} answers checked, {}/{} operations of the document exercised; not exercised: {missing:?}",
                r.checked.get(target).copied().unwrap_or(0),
                all.iter().filter(|o| ops.contains(*o)).count(),
                all.len(),
            );
        }
        for (trial, found) in &r.violations {
            for v in found {
                eprintln!("openapi violation ({trial}): {v}");
            }
        }
        r.violations.is_empty()
    })
}

/// The proxy's port, started on first use (on a runtime of its own: trials' runtimes end
/// with them).
pub fn port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        listener.set_nonblocking(true).expect("nonblocking");
        std::thread::Builder::new()
            .name("openapi-proxy".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                rt.block_on(serve(listener));
            })
            .expect("proxy thread");
        port
    })
}

async fn serve(listener: std::net::TcpListener) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("proxy listener");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(forward);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Forwards one request and checks its answer. An unreachable server closes the client's
/// connection without an answer, as the server itself would have looked.
async fn forward(mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, BoxError> {
    let trial = req
        .headers_mut()
        .remove(TRIAL_HEADER)
        .and_then(|v| v.to_str().ok().map(str::to_owned))
        .unwrap_or_else(|| UNCLAIMED.to_owned());
    req.headers_mut().remove("proxy-connection");
    let host = req
        .uri()
        .host()
        .ok_or("no host in the proxied URI")?
        .to_owned();
    let port = req.uri().port_u16().unwrap_or(80);
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    *req.uri_mut() = path.parse()?;
    let method = req.method().as_str().to_owned();
    let request_headers = lowercase(req.headers());
    let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    let (mut parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    let target = with_record(|r| r.ports.get(&port).copied());
    if let Some(target) = target {
        let mut headers = lowercase(&parts.headers);
        // A preflight is known by its request's header.
        headers.extend(
            request_headers
                .into_iter()
                .filter(|(k, _)| k == "access-control-request-method"),
        );
        let answer = Answer {
            method: &method,
            path: &path,
            status: parts.status.as_u16(),
            headers: &headers,
            body: &body,
        };
        let outcome = checker().check(&answer);
        with_record(|r| match outcome {
            Ok(Checked::Operation(op)) => {
                r.covered.entry(target).or_default().insert(op);
                *r.checked.entry(target).or_default() += 1;
            }
            Ok(Checked::Convention(_)) => *r.checked.entry(target).or_default() += 1,
            Ok(Checked::Skipped(_)) => {}
            Err(found) => {
                let list = r.violations.entry(trial).or_default();
                list.extend(found.into_iter().map(|v| format!("[{target}] {v}")));
            }
        });
    }
    // The body goes back whole: its length is known now.
    parts.headers.remove(hyper::header::TRANSFER_ENCODING);
    if method != "HEAD" {
        parts.headers.remove(hyper::header::CONTENT_LENGTH);
    }
    Ok(Response::from_parts(parts, Full::new(body)))
}

fn lowercase(headers: &hyper::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}
