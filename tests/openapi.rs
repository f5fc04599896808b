//! The OpenAPI description (`docs/openapi.yaml`, served as `/api/openapi.json`) checked against
//! every REST answer the e2e trials receive, so the document cannot drift from the servers.
//!
//! [`Checker`] is the pure part: an answer (method, path, status, headers, body) against the
//! document. The method and path must match an operation of the document (a path template; a
//! literal segment beats a parameter), the status must be one it lists, the content type one of
//! that response's, and a JSON body must validate against its schema (JSON Schema 2020-12, the
//! dialect of OpenAPI 3.1, with the `jsonschema` crate). The document's own conventions
//! (`x-unknown-path`, `x-method-not-allowed`) say what any other `/api/` path and any other
//! method answer. Not checked, on purpose: `/api/debug/*` (test-only routes: a panic and a 500
//! on demand), CORS preflights (the hosts' CORS policy, on every path), paths outside the
//! document and outside `/api/` (the static web client), and `wrangler dev`'s own 503 to a POST
//! that meets a restart of the worker.
//!
//! `proxy.rs` puts it in front of the targets: every trial's HTTP goes through it.

use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One HTTP answer as a client saw it.
pub struct Answer<'a> {
    pub method: &'a str,
    /// The path as sent (percent-encoded), with or without the query.
    pub path: &'a str,
    pub status: u16,
    /// Header names in lower case.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl Answer<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a valid answer was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// An operation of the document: `GET /api/rooms/{name}`.
    Operation(String),
    /// A refusal the document's conventions describe (unknown path, method not allowed).
    Convention(&'static str),
    /// Not part of the API (see the module's doc), not checked.
    Skipped(&'static str),
}

pub struct Checker {
    doc: Value,
    paths: Vec<Template>,
    /// Compiled schemas by their JSON pointer in the document.
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

struct Template {
    path: String,
    /// `None` for a `{parameter}` segment.
    segments: Vec<Option<String>>,
}

/// What `wrangler dev` itself answers (503, text) to a POST that meets a restart of the worker
/// (a trial restarts it): the development server's, not the API's.
const WRANGLER_RESTARTING: &[u8] = b"Your worker restarted mid-request.";

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

impl Checker {
    /// The document as `scripts/build-web` writes it (`web/dist/api/openapi.json`).
    pub fn load() -> Checker {
        let file = crate::repo_root().join("web/dist/api/openapi.json");
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{} (scripts/build-web writes it): {e}", file.display()));
        let doc = serde_json::from_str(&text).expect("openapi.json is JSON");
        Checker::new(doc)
    }

    pub fn new(doc: Value) -> Checker {
        let paths = doc["paths"]
            .as_object()
            .map(|p| {
                p.keys()
                    .map(|path| Template {
                        path: path.clone(),
                        segments: segments(path)
                            .map(|s| {
                                (!(s.starts_with('{') && s.ends_with('}'))).then(|| s.to_owned())
                            })
                            .collect(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Checker {
            doc,
            paths,
            validators: Mutex::new(HashMap::new()),
        }
    }

    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// Every operation of the document: `GET /api/rooms/{name}`.
    pub fn operations(&self) -> Vec<String> {
        let mut ops = Vec::new();
        for t in &self.paths {
            for m in METHODS {
                if self.doc["paths"][&t.path].get(*m).is_some() {
                    ops.push(format!("{} {}", m.to_uppercase(), t.path));
                }
            }
        }
        ops
    }

    /// `Ok` with what the answer was, or every way it differs from the document.
    pub fn check(&self, a: &Answer) -> Result<Checked, Vec<String>> {
        let path = a.path.split('?').next().unwrap_or_default();
        if path.starts_with("/api/debug/") {
            return Ok(Checked::Skipped("test-only route"));
        }
        if a.method == "OPTIONS" && a.header("access-control-request-method").is_some() {
            return Ok(Checked::Skipped("CORS preflight"));
        }
        if a.status == 503 && a.body.starts_with(WRANGLER_RESTARTING) {
            return Ok(Checked::Skipped("wrangler dev restarting the worker"));
        }
        let Some(template) = self.template(path) else {
            if !path.starts_with("/api/") {
                return Ok(Checked::Skipped("not the API (static files)"));
            }
            return self
                .convention(a, "x-unknown-path")
                .map(|()| Checked::Convention("unknown path"));
        };
        let item = &self.doc["paths"][&template.path];
        let method = a.method.to_lowercase();
        // HEAD is GET without the body (both hosts answer it so for static files).
        let (op, head) = match (item.get(&method), method.as_str()) {
            (Some(op), _) => (op, false),
            (None, "head") if item.get("get").is_some() => (&item["get"], true),
            _ => {
                return self
                    .convention(a, "x-method-not-allowed")
                    .map(|()| Checked::Convention("method not allowed"));
            }
        };
        let name = format!("{} {}", a.method, template.path);
        let pointer = format!(
            "/paths/{}/{}",
            escape(&template.path),
            if head { "get" } else { &method }
        );
        let status = a.status.to_string();
        let range = format!("{}XX", a.status / 100);
        let Some((key, response)) = [status.as_str(), range.as_str(), "default"]
            .into_iter()
            .find_map(|k| op["responses"].get(k).map(|r| (k, r)))
        else {
            let listed: Vec<&String> = op["responses"]
                .as_object()
                .map(|r| r.keys().collect())
                .unwrap_or_default();
            return Err(vec![format!(
                "{name}: status {} is not documented (documented: {listed:?}); body: {}",
                a.status,
                snippet(a.body)
            )]);
        };
        let (response, at) = self.deref(response, format!("{pointer}/responses/{key}"));
        let mut wrong = Vec::new();
        if let Some(headers) = response["headers"].as_object() {
            for (h, spec) in headers {
                let spec = self.deref(spec, String::new()).0;
                if spec["required"] == true && a.header(&h.to_lowercase()).is_none() {
                    wrong.push(format!(
                        "{name} {}: required header {h} is missing",
                        a.status
                    ));
                }
            }
        }
        if let (Some(content), false) = (response["content"].as_object(), head) {
            let media = a
                .header("content-type")
                .and_then(|c| c.split(';').next())
                .map(|c| c.trim().to_lowercase())
                .unwrap_or_default();
            match content.get(&media) {
                None => wrong.push(format!(
                    "{name} {}: content type {media:?} is not documented (documented: {:?}); body: {}",
                    a.status,
                    content.keys().collect::<Vec<_>>(),
                    snippet(a.body)
                )),
                Some(_) if !is_json(&media) => {}
                Some(m) => match serde_json::from_slice::<Value>(a.body) {
                    Err(e) => wrong.push(format!(
                        "{name} {}: the body is not JSON ({e}): {}",
                        a.status,
                        snippet(a.body)
                    )),
                    Ok(body) => {
                        let schema_at = format!("{at}/content/{}/schema", escape(&media));
                        wrong.extend(
                            self.validate(&m["schema"], &schema_at, &body)
                                .into_iter()
                                .map(|e| {
                                    format!("{name} {}: {e}; body: {}", a.status, snippet(a.body))
                                }),
                        );
                    }
                },
            }
        }
        match wrong.is_empty() {
            true => Ok(Checked::Operation(name)),
            false => Err(wrong),
        }
    }

    /// The document's convention `key` (`{"status", "code"}`): the answer must be that status
    /// with the error schema and that code.
    fn convention(&self, a: &Answer, key: &str) -> Result<(), Vec<String>> {
        let rule = &self.doc[key];
        let path = a.path.split('?').next().unwrap_or_default();
        let body: Option<Value> = serde_json::from_slice(a.body).ok();
        let code = body.as_ref().map(|b| b["error"]["code"].clone());
        if rule["status"].as_u64() == Some(u64::from(a.status))
            && code.as_ref() == Some(&rule["code"])
            && body.as_ref().is_some_and(|b| {
                self.validate(
                    &serde_json::json!({"$ref": "#/components/schemas/Error"}),
                    "/components/schemas/Error",
                    b,
                )
                .is_empty()
            })
        {
            return Ok(());
        }
        Err(vec![format!(
            "{} {path}: {} (the document's {key} says {} {}): {} answered {}",
            a.method,
            match key {
                "x-unknown-path" => "no such path in the document",
                _ => "no such method for this path in the document",
            },
            rule["status"],
            rule["code"],
            a.status,
            snippet(a.body)
        )])
    }

    /// The template `path` matches, the one with the most literal segments first.
    fn template(&self, path: &str) -> Option<&Template> {
        let got: Vec<&str> = segments(path).collect();
        self.paths
            .iter()
            .filter(|t| {
                t.segments.len() == got.len()
                    && t.segments.iter().zip(&got).all(|(t, g)| match t {
                        Some(lit) => lit == g,
                        None => !g.is_empty(),
                    })
            })
            .max_by_key(|t| t.segments.iter().filter(|s| s.is_some()).count())
    }

    /// Follows a `$ref` (within the document), with where the result is.
    fn deref<'a>(&'a self, v: &'a Value, at: String) -> (&'a Value, String) {
        match v["$ref"].as_str().and_then(|r| r.strip_prefix('#')) {
            Some(pointer) => match self.doc.pointer(pointer) {
                Some(target) => self.deref(target, pointer.to_owned()),
                None => (v, at),
            },
            None => (v, at),
        }
    }

    /// `body` against the schema at `at` (compiled once), as readable errors.
    fn validate(&self, schema: &Value, at: &str, body: &Value) -> Vec<String> {
        let validator = {
            let mut cache = self.validators.lock().unwrap_or_else(|p| p.into_inner());
            match cache.get(at) {
                Some(v) => v.clone(),
                None => match jsonschema::draft202012::new(&self.inline(schema, 0)) {
                    Ok(v) => {
                        let v = Arc::new(v);
                        cache.insert(at.to_owned(), v.clone());
                        v
                    }
                    Err(e) => {
                        return vec![format!("the document's schema at {at} is invalid: {e}")];
                    }
                },
            }
        };
        validator
            .iter_errors(body)
            .map(|e| format!("at {:?}: {e}", e.instance_path().to_string()))
            .collect()
    }

    /// `schema` with every `#/…` reference replaced by what it names (the document has no
    /// recursive schemas; a bound keeps a mistake from looping).
    fn inline(&self, schema: &Value, depth: usize) -> Value {
        match schema {
            Value::Object(map) => {
                if let Some(target) = map
                    .get("$ref")
                    .and_then(Value::as_str)
                    .and_then(|r| r.strip_prefix('#'))
                    .and_then(|p| self.doc.pointer(p))
                    .filter(|_| depth < 32)
                {
                    return self.inline(target, depth + 1);
                }
                Value::Object(
                    map.iter()
                        .map(|(k, v)| (k.clone(), self.inline(v, depth)))
                        .collect(),
                )
            }
            Value::Array(items) => {
                Value::Array(items.iter().map(|v| self.inline(v, depth)).collect())
            }
            other => other.clone(),
        }
    }
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.trim_start_matches('/').split('/')
}

/// A JSON pointer token (RFC 6901).
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn is_json(media: &str) -> bool {
    media == "application/json" || media.ends_with("+json")
}

/// The start of a body, for a violation's message.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.into_owned(),
    }
}
