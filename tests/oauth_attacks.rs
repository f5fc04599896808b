//! Sign-ins that must fail, and fail closed (`docs/accounts-oauth.md`): forged, replayed and
//! cookie-less callbacks, ID tokens that break one rule each (from the rig's `evil` provider,
//! an OpenID Connect provider that misbehaves on request, since a certified one cannot be made
//! to), a token endpoint in trouble, open redirects through `return_to`, and cookie requests
//! from other sites. Every refusal sets no session; the failures are logged, without the
//! secrets of the flow.

use crate::oauth::new_discord_user;
use crate::oauth_support::*;
use crate::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use std::time::Duration;

/// A Discord flow taken to the callback: the jar with its flow cookie and the way back.
async fn discord_flow(s: &Server) -> (Jar, String) {
    let (jar, url) = start(s, "discord", "/").await;
    (
        jar,
        at_provider(s, &with_query(&url, &new_discord_user()), "").await,
    )
}

/// `url` with its query parameter `name` set to `value`.
fn set_param(url: &str, name: &str, value: &str) -> String {
    let mut u = reqwest::Url::parse(url).expect("url");
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    u.query_pairs_mut()
        .clear()
        .extend_pairs(pairs)
        .append_pair(name, value);
    u.to_string()
}

pub async fn forged_replayed_and_cookieless_callbacks_sign_no_one_in(s: &Server) {
    // Another state than the flow's.
    let (jar, back) = discord_flow(s).await;
    callback(&set_param(&back, "state", "forged-state"), &jar)
        .await
        .assert_refused(400, "oauth_flow", "wrong state");

    // No flow cookie (a callback opened in another browser, or replayed after the first).
    let (_, back) = discord_flow(s).await;
    callback(&back, &Jar::default())
        .await
        .assert_refused(400, "oauth_flow", "no flow cookie");

    // A tampered flow cookie (its PKCE verifier swapped): the signature check fails.
    let (mut jar, back) = discord_flow(s).await;
    let cookie = jar.get("piano_oauth").expect("flow cookie").to_owned();
    let (body, tag) = cookie.split_once('.').expect("body.tag");
    let mut flow: serde_json::Value =
        serde_json::from_slice(&B64.decode(body).expect("base64url")).expect("json flow");
    flow["v"] = B64.encode([7u8; 32]).into();
    jar.set(
        "piano_oauth",
        &format!("{}.{tag}", B64.encode(flow.to_string())),
    );
    callback(&back, &jar)
        .await
        .assert_refused(400, "oauth_flow", "tampered flow cookie");

    // Another provider's flow at this provider's callback.
    let (jar, _) = start(s, "local", "/").await;
    let (_, back) = discord_flow(s).await;
    callback(&back, &jar)
        .await
        .assert_refused(400, "oauth_flow", "another provider's flow");

    // A replayed code, with a fresh copy of the flow cookie: the provider refuses it. At the
    // Discord stand-in and at the real OpenID Connect provider.
    let (jar, back) = discord_flow(s).await;
    assert_eq!(callback(&back, &jar.clone()).await.status, 303);
    callback(&back, &jar)
        .await
        .assert_refused(400, "oauth_code", "replayed code (discord)");
    let (jar, url) = start(s, "local", "/").await;
    let back = at_provider(s, &url, &unique("replay")).await;
    assert_eq!(callback(&back, &jar).await.status, 303);
    callback(&back, &jar)
        .await
        .assert_refused(400, "oauth_code", "replayed code (oidc)");

    // No such provider; and a browser (no JSON asked) gets the page saying what happened.
    let a = Answer::of(
        http_no_redirects()
            .get(s.http("/api/auth/oauth/nosuch/start"))
            .header("accept", "application/json")
            .send()
            .await
            .expect("GET"),
    )
    .await;
    a.assert_refused(404, "unknown_provider", "unknown provider");
    let (jar, back) = discord_flow(s).await;
    let page = Answer::of(
        http_no_redirects()
            .get(set_param(&back, "state", "x"))
            .header("cookie", jar.header())
            .header("accept", "text/html")
            .send()
            .await
            .expect("GET callback"),
    )
    .await;
    assert_eq!(page.status, 400, "{page:?}");
    assert!(
        page.body.contains("oauth_flow") && page.cookie("piano_refresh").is_none(),
        "{page:?}"
    );
}

pub async fn id_tokens_that_break_a_rule_are_refused(s: &Server) {
    let attempt = |mode: &'static str| async move {
        let (jar, url) = start(s, "evil", "/").await;
        let sub = unique("evil");
        let back = at_provider(s, &with_query(&url, &format!("mode={mode}&as={sub}")), "").await;
        (callback(&back, &jar).await, sub)
    };
    // The provider's honest answers sign in (RS256, and EdDSA with its other key)...
    for mode in ["ok", "eddsa"] {
        let (a, sub) = attempt(mode).await;
        assert_eq!(a.status, 303, "{mode}: {a:?}");
        let mut session = Session::from_answer(&a);
        let profile = me(s, &session.refresh(s).await).await;
        assert_eq!(profile["name"], format!("Evil {sub}"), "{mode}: {profile}");
    }
    // ...and each that breaks one rule does not.
    for mode in [
        "other_key",
        "unknown_kid",
        "alg_none",
        "hs256",
        "wrong_aud",
        "wrong_iss",
        "expired",
        "future_iat",
        "bad_nonce",
        "userinfo_other_sub",
    ] {
        let (a, _) = attempt(mode).await;
        a.assert_refused(401, "oauth_token", mode);
        assert!(
            a.cookie("piano_oauth").is_some_and(SetCookie::clears),
            "{mode}: {a:?}"
        );
    }
    // A token endpoint in trouble: the provider is unusable, said as such.
    for mode in ["token_500", "token_garbage"] {
        let (a, _) = attempt(mode).await;
        a.assert_refused(502, "oauth_provider", mode);
    }
}

pub async fn return_to_must_be_a_path_on_this_site(s: &Server) {
    let client = http_no_redirects();
    // Raw query values (as an attacker writes them into a link).
    for raw in [
        "%2F%2Fevil.example",
        "//evil.example",
        "https://evil.example",
        "https:%2F%2Fevil.example",
        "/%5Cevil.example",
        "%2F%5Cevil.example",
        "%5C%5Cevil.example",
        "javascript:alert(1)",
        "evil.example",
        "/a%0d%0aSet-Cookie:%20x=1",
        "/a%09b",
    ] {
        let start = Answer::of(
            client
                .get(s.http(&format!("/api/auth/oauth/discord/start?return_to={raw}")))
                .header("accept", "application/json")
                .send()
                .await
                .expect("GET start"),
        )
        .await;
        start.assert_refused(400, "bad_return_to", raw);
        // No flow begins (a host may clear a flow cookie, as at every failure).
        assert!(
            start.cookie("piano_oauth").is_none_or(SetCookie::clears),
            "{raw}: {start:?}"
        );
    }
    let long = format!("/{}", "a".repeat(600));
    let a = Answer::of(
        client
            .get(s.http("/api/auth/oauth/local/start"))
            .query(&[("return_to", long.as_str())])
            .header("accept", "application/json")
            .send()
            .await
            .expect("GET start"),
    )
    .await;
    a.assert_refused(400, "bad_return_to", "600 bytes");
    let (_, access) = password_member(s).await;
    let a = Answer::of(
        client
            .post(s.http("/api/auth/oauth/discord/link?return_to=//evil.example"))
            .bearer_auth(&access)
            .send()
            .await
            .expect("POST link"),
    )
    .await;
    a.assert_refused(400, "bad_return_to", "link");
    // Without one: home.
    let (jar, url) = start(s, "discord", "").await;
    let back = at_provider(s, &with_query(&url, &new_discord_user()), "").await;
    assert_eq!(callback(&back, &jar).await.location, "/");
}

pub async fn cookie_refresh_and_logout_need_our_origin_and_the_csrf_token(s: &Server) {
    let mut session = sign_in(s, "discord", &new_discord_user(), "").await;
    let member = me(s, &session.refresh(s).await).await["id"].clone();
    let own = s.http("");
    let csrf = session.csrf.clone();
    let wrong = csrf_of("some other session");
    for path in ["/api/auth/refresh", "/api/auth/logout"] {
        for (origin, token, site, what) in [
            (
                Some("https://evil.example"),
                Some(csrf.as_str()),
                None,
                "another site's origin",
            ),
            (Some("null"), Some(csrf.as_str()), None, "an opaque origin"),
            (None, Some(csrf.as_str()), None, "no origin"),
            (Some(own.as_str()), None, None, "no CSRF token"),
            (
                Some(own.as_str()),
                Some(wrong.as_str()),
                None,
                "a wrong CSRF token",
            ),
            (
                Some(own.as_str()),
                Some(csrf.as_str()),
                Some("cross-site"),
                "Sec-Fetch-Site: cross-site",
            ),
        ] {
            session
                .post(s, path, origin, token, site)
                .await
                .assert_refused(403, "cross_site", &format!("{path}: {what}"));
        }
    }
    // The session survived all that: the refresh rotates it; the member is still signed in.
    let before = session.clone();
    let fresh = session.refresh(s).await;
    assert_eq!(me(s, &fresh).await["id"], member);
    assert_ne!(before.csrf, session.csrf);

    // Logout ends it and clears both cookies; its refresh token is dead after.
    let csrf = session.csrf.clone();
    let a = session
        .post(s, "/api/auth/logout", Some(&own), Some(&csrf), None)
        .await;
    assert_eq!(a.status, 204, "{a:?}");
    for name in ["piano_refresh", "piano_csrf"] {
        assert!(
            a.cookie(name).is_some_and(SetCookie::clears),
            "logout clears {name}: {a:?}"
        );
    }
    let (status, _) = get_as(s, "/api/users/me", &fresh).await;
    assert_eq!(status, 401, "the session's access token");
    let again = session
        .post(s, "/api/auth/refresh", Some(&own), Some(&csrf), None)
        .await;
    assert_eq!(
        again.status, 401,
        "the logged-out refresh cookie: {again:?}"
    );
    let (status, _) = s
        .post_json(
            "/api/auth/refresh",
            serde_json::json!({"refresh_token": session.refresh}),
        )
        .await;
    assert_eq!(status, 401, "the logged-out refresh token in a body");
}

/// The lines of the server's logs our code printed (wrangler prints its own around them).
fn our_log_lines(s: &Server) -> Vec<String> {
    s.log_paths()
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .filter(|l| s.host != Host::Edge || l.starts_with("{\"time\":"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

pub async fn oauth_failures_are_logged_without_the_flows_secrets(s: &Server) {
    // A refusal at Discord carrying a mark of this trial as its error: found by it in the log.
    let mark = unique("mark").replace('-', "_");
    let (jar, url) = start(s, "discord", "/").await;
    let flow_cookie = jar.get("piano_oauth").expect("flow cookie").to_owned();
    let body = flow_cookie.split('.').next().unwrap_or("");
    let flow: serde_json::Value =
        serde_json::from_slice(&B64.decode(body).expect("base64url")).expect("json flow");
    let verifier = flow["v"].as_str().expect("the PKCE verifier").to_owned();
    let back = at_provider(s, &with_query(&url, &format!("deny={mark}")), "").await;
    let denied = callback(&back, &jar).await;
    denied.assert_refused(403, "oauth_denied", "an error from the provider");

    // A session used through its cookies and its JSON twin: tokens that must not be logged.
    let mut session = sign_in(s, "discord", &new_discord_user(), "").await;
    let mut secrets = vec![session.refresh.clone()];
    let access = session.refresh(s).await;
    secrets.extend([
        session.refresh.clone(),
        access.clone(),
        flow_cookie.clone(),
        verifier,
    ]);
    let (jar, back) = discord_flow(s).await;
    let code = reqwest::Url::parse(&back)
        .expect("url")
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("code");
    secrets.extend([code, jar.get("piano_oauth").unwrap_or("").to_owned()]);
    let a = callback(&back, &jar).await;
    let other = Session::from_answer(&a);
    secrets.extend([other.refresh.clone()]);
    callback(&back, &jar)
        .await
        .assert_refused(400, "oauth_code", "replayed");

    // An ID token that fails its check: found by the answer's request id.
    let (jar, url) = start(s, "evil", "/").await;
    let back = at_provider(s, &with_query(&url, "mode=bad_nonce"), "").await;
    let refused = callback(&back, &jar).await;
    refused.assert_refused(401, "oauth_token", "bad nonce");

    for (what, provider, code, found_by) in [
        (
            "the provider's error",
            "discord",
            "oauth_denied",
            vec![mark.clone(), denied.request_id.clone()],
        ),
        (
            "the ID token's refusal",
            "evil",
            "oauth_token",
            vec![refused.request_id.clone()],
        ),
    ] {
        // docs/operating-logs-errors.md: every line logged while serving a request carries the
        // request id the answer's x-request-id names.
        let why = format!("{what}: an oauth_failure line with the answer's request id");
        let line = eventually(&why, Duration::from_secs(20), || async {
            our_log_lines(s).into_iter().find(|l| {
                l.contains("oauth_failure")
                    && found_by
                        .iter()
                        .any(|m| !m.is_empty() && l.contains(m.as_str()))
            })
        })
        .await;
        let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
        assert_eq!(v["event"], "oauth_failure", "{line}");
        assert!(
            line.contains(provider) && line.contains(code),
            "{what}: {line}"
        );
        assert_eq!(
            v["request_id"],
            found_by[found_by.len() - 1].as_str(),
            "{what}: the line carries the answer's request id: {line}"
        );
    }
    for l in our_log_lines(s) {
        for secret in &secrets {
            assert!(
                !l.contains(secret.as_str()),
                "a secret of the flow in the log: {l}"
            );
        }
    }
}
