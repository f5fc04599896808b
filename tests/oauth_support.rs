//! What the sign-in trials (`oauth.rs`, `oauth_attacks.rs`) share: an HTTP client that follows
//! no redirect, a browser's cookies kept by hand, the walk through each provider of the rig
//! (`tests/support/oauth-rig.mjs`) and the cookie session's requests.

use crate::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sha2::Digest;
use std::collections::BTreeMap;

pub(crate) fn http_no_redirects() -> reqwest::Client {
    crate::http_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// One `Set-Cookie`: the name, the value and the attributes (lower-cased, `; `-joined).
#[derive(Debug, Clone)]
pub(crate) struct SetCookie {
    pub name: String,
    pub value: String,
    pub attrs: String,
}

impl SetCookie {
    fn parse(header: &str) -> Option<SetCookie> {
        let (pair, attrs) = header.split_once(';').unwrap_or((header, ""));
        let (name, value) = pair.split_once('=')?;
        Some(SetCookie {
            name: name.trim().to_owned(),
            value: value.trim().to_owned(),
            attrs: attrs
                .split(';')
                .map(|a| a.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join("; "),
        })
    }

    pub fn has(&self, attr: &str) -> bool {
        self.attrs.split("; ").any(|a| a == attr)
    }

    pub fn max_age(&self) -> Option<i64> {
        self.attrs
            .split("; ")
            .find_map(|a| a.strip_prefix("max-age=")?.parse().ok())
    }

    /// Clears the cookie: no value, or no time left.
    pub fn clears(&self) -> bool {
        self.value.is_empty() || self.max_age().is_some_and(|m| m <= 0)
    }
}

/// An answer, read whole.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub location: String,
    pub cookies: Vec<SetCookie>,
    pub request_id: String,
    pub body: String,
}

impl Answer {
    pub async fn of(resp: reqwest::Response) -> Answer {
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let (location, request_id) = (header("location"), header("x-request-id"));
        let cookies = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| SetCookie::parse(v.to_str().ok()?))
            .collect();
        Answer {
            status: resp.status().as_u16(),
            location,
            cookies,
            request_id,
            body: resp.text().await.unwrap_or_default(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }

    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    pub fn cookie(&self, name: &str) -> Option<&SetCookie> {
        self.cookies.iter().find(|c| c.name == name)
    }

    /// A refusal: this status and code, and no session cookie given.
    #[track_caller]
    pub fn assert_refused(&self, status: u16, code: &str, what: &str) {
        assert_eq!(
            (self.status, self.code().as_str()),
            (status, code),
            "{what}: {self:?}"
        );
        for name in ["piano_refresh", "piano_csrf"] {
            assert!(
                self.cookie(name).is_none_or(SetCookie::clears),
                "{what}: a refusal set {name}: {self:?}"
            );
        }
    }
}

/// A browser's cookies for one site, by name (each trial's jar sees one site only).
#[derive(Debug, Clone, Default)]
pub(crate) struct Jar(BTreeMap<String, String>);

impl Jar {
    pub fn keep(&mut self, a: &Answer) {
        for c in &a.cookies {
            match c.clears() {
                true => self.0.remove(&c.name),
                false => self.0.insert(c.name.clone(), c.value.clone()),
            };
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn set(&mut self, name: &str, value: &str) {
        self.0.insert(name.to_owned(), value.to_owned());
    }

    pub fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// `url` with `extra` (already encoded) added to its query.
pub(crate) fn with_query(url: &str, extra: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{extra}")
}

/// `GET /api/auth/oauth/{provider}/start`: the provider's address and the flow cookie.
pub(crate) async fn start(s: &Server, provider: &str, return_to: &str) -> (Jar, String) {
    let resp = http_no_redirects()
        .get(s.http(&format!("/api/auth/oauth/{provider}/start")))
        .query(&[("return_to", return_to)])
        .send()
        .await
        .expect("GET start");
    let a = Answer::of(resp).await;
    assert_eq!(a.status, 302, "start {provider}: {a:?}");
    let flow = a.cookie("piano_oauth").expect("start sets the flow cookie");
    assert!(
        flow.has("httponly")
            && flow.has("samesite=lax")
            && flow.has("path=/api/auth/oauth")
            && !flow.has("secure"),
        "the flow cookie (plain HTTP on loopback: not Secure): {flow:?}"
    );
    let mut jar = Jar::default();
    jar.keep(&a);
    (jar, a.location)
}

/// `POST /api/auth/oauth/{provider}/link` as the member: the provider's address and the flow
/// cookie.
pub(crate) async fn start_link(s: &Server, provider: &str, access: &str) -> (Jar, String) {
    let resp = http_no_redirects()
        .post(s.http(&format!("/api/auth/oauth/{provider}/link")))
        .query(&[("return_to", "/settings")])
        .bearer_auth(access)
        .send()
        .await
        .expect("POST link");
    let a = Answer::of(resp).await;
    assert_eq!(a.status, 200, "link {provider}: {a:?}");
    assert!(
        a.cookie("piano_oauth").is_some(),
        "link sets the flow cookie"
    );
    let mut jar = Jar::default();
    jar.keep(&a);
    let url = a.json()["url"]
        .as_str()
        .expect("link answers url")
        .to_owned();
    (jar, url)
}

/// What the player does at the provider: `url` is where our server sent the browser (with the
/// rig's extra parameters for Discord and the evil provider); for the real OpenID Connect
/// provider, `login` is the name typed into its login form (then consent). Returns the
/// provider's redirect back to our server's callback.
pub(crate) async fn at_provider(s: &Server, url: &str, login: &str) -> String {
    let client = http_no_redirects();
    let mut jar = Jar::default();
    let mut next = url.to_owned();
    let mut form: Option<Vec<(&str, String)>> = None;
    for _ in 0..12 {
        let req = match form.take() {
            Some(f) => client.post(&next).form(&f),
            None => client.get(&next),
        };
        let resp = req
            .header("cookie", jar.header())
            .send()
            .await
            .expect("the provider answers");
        let base = resp.url().clone();
        let a = Answer::of(resp).await;
        jar.keep(&a);
        if (300..400).contains(&a.status) {
            next = base.join(&a.location).expect("a location").to_string();
            if next.starts_with(&s.http("/api/auth/oauth/")) {
                return next;
            }
            continue;
        }
        assert_eq!(a.status, 200, "at the provider {next}: {a:?}");
        // oidc-provider's development forms: the login form, then consent.
        let action = a
            .body
            .split("action=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("no form at {next}: {}", a.body));
        next = base
            .join(&action.replace("&amp;", "&"))
            .expect("form action")
            .to_string();
        form = Some(match a.body.contains("name=\"prompt\" value=\"login\"") {
            true => vec![
                ("prompt", "login".into()),
                ("login", login.to_owned()),
                ("password", "any password".into()),
            ],
            false => vec![("prompt", "consent".into())],
        });
    }
    panic!("the provider did not send the browser back: {next}")
}

/// `GET` the callback with the flow cookie of `jar` (the answer in JSON when it is an error).
pub(crate) async fn callback(url: &str, jar: &Jar) -> Answer {
    let resp = http_no_redirects()
        .get(url)
        .header("cookie", jar.header())
        .header("accept", "application/json")
        .send()
        .await
        .expect("GET callback");
    Answer::of(resp).await
}

/// A browser's session: the two cookies.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub refresh: String,
    pub csrf: String,
}

/// `piano_csrf` for a refresh token, as the contract computes it.
pub(crate) fn csrf_of(refresh: &str) -> String {
    let digest = sha2::Sha256::digest(format!("piano-csrf-v1:{refresh}"));
    B64.encode(digest)[..32].to_owned()
}

impl Session {
    /// The session an answer sets, its cookies checked against the contract.
    #[track_caller]
    pub fn from_answer(a: &Answer) -> Session {
        let refresh = a
            .cookie("piano_refresh")
            .unwrap_or_else(|| panic!("no piano_refresh cookie: {a:?}"));
        let csrf = a
            .cookie("piano_csrf")
            .unwrap_or_else(|| panic!("no piano_csrf cookie: {a:?}"));
        assert!(
            refresh.has("httponly")
                && refresh.has("samesite=lax")
                && refresh.has("path=/api/auth")
                && !refresh.has("secure")
                && refresh.max_age().is_some_and(|m| m > 0),
            "{refresh:?}"
        );
        assert!(
            !csrf.has("httponly") && csrf.has("samesite=strict") && csrf.has("path=/"),
            "{csrf:?}"
        );
        assert_eq!(csrf.value, csrf_of(&refresh.value), "the CSRF token");
        Session {
            refresh: refresh.value.clone(),
            csrf: csrf.value.clone(),
        }
    }

    pub fn cookie_header(&self) -> String {
        format!("piano_refresh={}; piano_csrf={}", self.refresh, self.csrf)
    }

    /// `POST path` (`/api/auth/refresh` or `/logout`) carrying the cookies, with these `Origin`,
    /// `x-csrf-token` and `Sec-Fetch-Site` headers.
    pub async fn post(
        &self,
        s: &Server,
        path: &str,
        origin: Option<&str>,
        csrf: Option<&str>,
        fetch_site: Option<&str>,
    ) -> Answer {
        let mut req = http_no_redirects()
            .post(s.http(path))
            .header("cookie", self.cookie_header());
        for (name, value) in [
            ("origin", origin),
            ("x-csrf-token", csrf),
            ("sec-fetch-site", fetch_site),
        ] {
            if let Some(v) = value {
                req = req.header(name, v);
            }
        }
        Answer::of(req.send().await.expect("POST with cookies")).await
    }

    /// A refresh as the web client makes it: the access token; the cookies rotate.
    pub async fn refresh(&mut self, s: &Server) -> String {
        let origin = s.http("");
        let csrf = self.csrf.clone();
        let a = self
            .post(s, "/api/auth/refresh", Some(&origin), Some(&csrf), None)
            .await;
        assert_eq!(a.status, 200, "cookie refresh: {a:?}");
        let body = a.json();
        assert!(
            body.get("refresh_token").is_none(),
            "a cookie refresh keeps the token out of the body: {body}"
        );
        let next = Session::from_answer(&a);
        assert_ne!(next.refresh, self.refresh, "the refresh cookie rotates");
        assert_eq!(body["csrf_token"], next.csrf.as_str(), "{body}");
        *self = next;
        body["access_token"]
            .as_str()
            .expect("an access token")
            .to_owned()
    }
}

/// A complete sign-in through `provider`: start, the provider (with `extra` added to its
/// address; `login` at the real OpenID Connect provider), callback. Asserts the 303 to
/// `return_to` and the cookies; returns the session.
pub(crate) async fn sign_in(s: &Server, provider: &str, extra: &str, login: &str) -> Session {
    let return_to = format!("/after/{}?x=1", unique("r"));
    let (jar, url) = start(s, provider, &return_to).await;
    let back = at_provider(s, &with_query(&url, extra), login).await;
    let a = callback(&back, &jar).await;
    assert_eq!(
        (a.status, a.location.as_str()),
        (303, return_to.as_str()),
        "sign-in through {provider}: {a:?}"
    );
    assert!(
        a.cookie("piano_oauth").is_some_and(SetCookie::clears),
        "the callback clears the flow cookie: {a:?}"
    );
    Session::from_answer(&a)
}

/// `GET path` with a bearer token: status and JSON.
pub(crate) async fn get_as(s: &Server, path: &str, access: &str) -> (u16, serde_json::Value) {
    let resp = http_no_redirects()
        .get(s.http(path))
        .bearer_auth(access)
        .send()
        .await
        .expect("GET with a bearer token");
    let a = Answer::of(resp).await;
    (a.status, a.json())
}

/// The member's stored profile (`GET /api/users/me`).
pub(crate) async fn me(s: &Server, access: &str) -> serde_json::Value {
    let (status, body) = get_as(s, "/api/users/me", access).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// A Discord user of the stand-in: a snowflake-like id no other trial uses.
pub(crate) fn discord_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}{:03}{n:03}", now_ms(), std::process::id() % 1000)
}

/// A registered password member and its access token.
pub(crate) async fn password_member(s: &Server) -> (String, String) {
    let name = unique("pw");
    let (status, reg) = s
        .post_json(
            "/api/auth/register",
            serde_json::json!({"username": name, "password": "correct horse"}),
        )
        .await;
    assert_eq!(status, 201, "{reg}");
    (
        name,
        reg["access_token"].as_str().expect("token").to_owned(),
    )
}
