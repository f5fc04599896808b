//! Signing in through providers (`docs/accounts-oauth.md`), on every target, against the rig
//! of `oauth_rig.rs`: `local` is a real OpenID Connect provider (`oidc-provider`), `discord` a
//! stand-in for Discord's OAuth2 endpoints (Discord itself cannot be reached from the tests).
//! First sign-ins create accounts and later ones find them; the session lives in cookies and
//! its access token plays (protobuf and MPP); members link and unlink providers, and one
//! identity linked by two members at once goes to one of them. The refusals are in
//! `oauth_attacks.rs`.

use crate::mpp::Mpp;
use crate::oauth_support::*;
use crate::*;
use e2e_tests::proto::server_message;
use piano_core::names::percent_encode;

/// A Discord username no other trial uses.
pub(crate) fn discord_name() -> String {
    unique("dc").replace('-', "_")
}

/// A new Discord user of the stand-in, with no global name or avatar.
pub(crate) fn new_discord_user() -> String {
    discord_as(&discord_id(), &discord_name(), "", "")
}

/// The stand-in's query for a Discord user: `as=<id>:<username>:<global name>:<avatar hash>`.
pub(crate) fn discord_as(id: &str, username: &str, global: &str, avatar: &str) -> String {
    format!(
        "as={}",
        percent_encode(&format!("{id}:{username}:{global}:{avatar}"))
    )
}

pub async fn oidc_sign_in_creates_the_account_then_finds_it_and_it_plays(s: &Server) {
    let (status, providers) = get_as(s, "/api/auth/providers", "").await;
    assert_eq!(status, 200, "{providers}");
    let listed: Vec<(String, String)> = providers["providers"]
        .as_array()
        .expect("providers")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap_or("").into(),
                p["kind"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    for want in [("local", "oidc"), ("discord", "discord"), ("evil", "oidc")] {
        assert!(
            listed.contains(&(want.0.into(), want.1.into())),
            "{providers}"
        );
    }

    // The login name at the provider is its account (sub and preferred_username).
    let login = unique("oi");
    let mut first = sign_in(s, "local", "", &login).await;
    let access = first.refresh(s).await;
    let profile = me(s, &access).await;
    assert_eq!(profile["username"], login.as_str(), "{profile}");
    assert_eq!(profile["name"], format!("Local {login}"), "{profile}");
    assert_eq!(
        profile["avatar"],
        format!("{}/oidc-pictures/{login}.png", s.oauth.base()),
        "{profile}"
    );
    let (status, ids) = get_as(s, "/api/auth/identities", &access).await;
    assert_eq!(status, 200, "{ids}");
    assert_eq!(ids["has_password"], false, "{ids}");
    assert_eq!(ids["identities"][0]["provider"], "local", "{ids}");
    assert_eq!(ids["identities"][0]["subject"], login.as_str(), "{ids}");

    // Again, in a new browser (a new login at the provider too): the same account.
    let mut second = sign_in(s, "local", "", &login).await;
    let access2 = second.refresh(s).await;
    assert_eq!(me(s, &access2).await["id"], profile["id"]);

    // The access token joins a room and plays as the member.
    let member_id = profile["id"].as_str().expect("id").to_owned();
    let room = unique("oauth-room");
    let mut player = Client::connect(&format!("{}?token={access}", s.ws_url(&room)), &[])
        .await
        .expect("the member connects");
    let you = player.welcome.you.clone().expect("you");
    assert_eq!(
        (you.user_id.as_str(), you.roles.clone()),
        (member_id.as_str(), vec!["member".to_owned()])
    );
    player.join().await;
    let mut listener = s.player(&room, "Listener").await;
    listener.join().await;
    player.send(note_on(64, 90)).await;
    let batch = listener
        .recv_matching(|m| match m {
            server_message::Msg::Notes(n) => Some(n.clone()),
            _ => None,
        })
        .await;
    assert_eq!(batch.sender_id, player.id());

    // The same token at the MPP entry: `hi` names the member, a protobuf player sees it.
    let mpp_room = unique("oauth mpp");
    let mut mpp = Mpp::start(s, &mpp_room, Some(&access)).await;
    let hi = mpp.wait("hi", |m| Some(m.clone())).await;
    assert_eq!(hi["u"]["name"], format!("Local {login}"), "{hi}");
    assert!(
        hi.get("token").is_none(),
        "a member gets no guest token: {hi}"
    );
    let mpp_id = mpp
        .wait("ch", |m| {
            (m["ch"]["_id"] == mpp_room.as_str()).then(|| m["p"].clone())
        })
        .await;
    let mut seer = s.player(&mpp_room, "Seer").await;
    let joined = seer.join().await;
    let them = joined
        .participants
        .iter()
        .find(|p| mpp_id == p.id.as_str())
        .expect("the MPP client is a participant");
    assert_eq!(them.user_id, member_id);
    player.close().await;
}

pub async fn discord_sign_in_creates_then_finds_and_a_refusal_signs_no_one_in(s: &Server) {
    let id = discord_id();
    let username = discord_name();
    let avatar = "8342729096ea3675442027381ff50dfe";
    let who = discord_as(&id, &username, "Nelly Discord", avatar);
    let mut first = sign_in(s, "discord", &who, "").await;
    let access = first.refresh(s).await;
    let profile = me(s, &access).await;
    assert_eq!(profile["username"], username.as_str(), "{profile}");
    assert_eq!(profile["name"], "Nelly Discord", "{profile}");
    assert_eq!(
        profile["avatar"],
        format!("{}/discord/cdn/avatars/{id}/{avatar}.png", s.oauth.base()),
        "{profile}"
    );
    assert_eq!(profile["roles"], serde_json::json!(["member"]), "{profile}");
    let mut second = sign_in(s, "discord", &who, "").await;
    assert_eq!(me(s, &second.refresh(s).await).await["id"], profile["id"]);
    // Another Discord user with the same username: another account, a suffixed name.
    let mut other = sign_in(
        s,
        "discord",
        &discord_as(&discord_id(), &username, "", ""),
        "",
    )
    .await;
    let other_profile = me(s, &other.refresh(s).await).await;
    assert_ne!(other_profile["id"], profile["id"]);
    let other_name = other_profile["username"].as_str().unwrap_or("");
    assert!(
        other_name.starts_with(&format!("{username}-")),
        "{other_profile}"
    );
    assert_eq!(
        other_profile["name"],
        username.as_str(),
        "no global name: the username"
    );

    // The player says no at Discord: oauth_denied, no session.
    let (jar, url) = start(s, "discord", "/").await;
    let back = at_provider(s, &with_query(&url, "deny=1"), "").await;
    let a = callback(&back, &jar).await;
    a.assert_refused(403, "oauth_denied", "consent refused");
    assert!(
        a.cookie("piano_oauth").is_some_and(SetCookie::clears),
        "{a:?}"
    );
}

pub async fn members_link_and_unlink_providers(s: &Server) {
    let (name, access) = password_member(s).await;
    let id = discord_id();
    let linker = discord_as(&id, &discord_name(), "Linker", "");
    let (jar, url) = start_link(s, "discord", &access).await;
    let back = at_provider(s, &with_query(&url, &linker), "").await;
    let a = callback(&back, &jar).await;
    assert_eq!((a.status, a.location.as_str()), (303, "/settings"), "{a:?}");
    let (status, ids) = get_as(s, "/api/auth/identities", &access).await;
    assert_eq!(status, 200, "{ids}");
    assert_eq!(ids["has_password"], true, "{ids}");
    let linked = ids["identities"].as_array().expect("identities");
    assert_eq!(linked.len(), 1, "{ids}");
    assert_eq!(
        (
            linked[0]["provider"].as_str(),
            linked[0]["subject"].as_str()
        ),
        (Some("discord"), Some(id.as_str())),
        "{ids}"
    );

    // Signing in with that Discord user now finds the password member.
    let mut via_discord = sign_in(s, "discord", &linker, "").await;
    assert_eq!(
        me(s, &via_discord.refresh(s).await).await["username"],
        name.as_str()
    );

    // A second Discord user on the same account: unlink the first one first.
    let (jar, url) = start_link(s, "discord", &access).await;
    let back = at_provider(s, &with_query(&url, &new_discord_user()), "").await;
    callback(&back, &jar).await.assert_refused(
        409,
        "provider_already_linked",
        "a second Discord user",
    );

    // Unlink: gone; again: not linked. Without a token: refused.
    let unlink = |token: String| async move {
        let mut req = http_no_redirects().delete(s.http("/api/auth/identities/discord"));
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        Answer::of(req.send().await.expect("DELETE identity")).await
    };
    assert_eq!(unlink(String::new()).await.status, 401);
    assert_eq!(unlink(access.clone()).await.status, 204);
    let (_, ids) = get_as(s, "/api/auth/identities", &access).await;
    assert_eq!(ids["identities"], serde_json::json!([]), "{ids}");
    unlink(access.clone())
        .await
        .assert_refused(404, "not_linked", "unlinked twice");

    // An account made by Discord has no other way in: its last identity stays.
    let mut only = sign_in(s, "discord", &new_discord_user(), "").await;
    let only_access = only.refresh(s).await;
    unlink(only_access.clone())
        .await
        .assert_refused(409, "last_way_in", "the only way in");
    let (_, ids) = get_as(s, "/api/auth/identities", &only_access).await;
    assert_eq!(ids["identities"].as_array().map(Vec::len), Some(1), "{ids}");

    // Linking needs a member's token.
    let resp = http_no_redirects()
        .post(s.http("/api/auth/oauth/discord/link"))
        .send()
        .await
        .expect("POST link");
    assert_eq!(resp.status().as_u16(), 401);
}

pub async fn one_identity_linked_by_two_members_at_once_goes_to_one(s: &Server) {
    for round in 0..4 {
        let id = discord_id();
        let who = discord_as(&id, &discord_name(), "", "");
        let (_, a_token) = password_member(s).await;
        let (_, b_token) = password_member(s).await;
        let mut backs = Vec::new();
        for token in [&a_token, &b_token] {
            let (jar, url) = start_link(s, "discord", token).await;
            backs.push((at_provider(s, &with_query(&url, &who), "").await, jar));
        }
        // Both callbacks at the same time.
        let (x, y) = tokio::join!(
            callback(&backs[0].0, &backs[0].1),
            callback(&backs[1].0, &backs[1].1)
        );
        let outcomes = [(x.status, x.code()), (y.status, y.code())];
        let won = outcomes.iter().filter(|(st, _)| *st == 303).count();
        let lost = outcomes
            .iter()
            .filter(|(st, c)| *st == 409 && c == "identity_linked_elsewhere")
            .count();
        assert_eq!((won, lost), (1, 1), "round {round}: {x:?} {y:?}");
        // The identities agree: the winner has it, the loser nothing.
        let mut holders = 0;
        for token in [&a_token, &b_token] {
            let (_, ids) = get_as(s, "/api/auth/identities", token).await;
            holders += ids["identities"]
                .as_array()
                .map(|l| l.iter().filter(|i| i["subject"] == id.as_str()).count())
                .unwrap_or(0);
        }
        assert_eq!(holders, 1, "round {round}");
    }
}

/// `POST path` (register or login) with this body and `Origin`.
async fn login_at(
    s: &Server,
    path: &str,
    body: serde_json::Value,
    origin: Option<String>,
) -> Answer {
    let mut req = http_no_redirects().post(s.http(path)).json(&body);
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    Answer::of(req.send().await.expect("POST register/login")).await
}

pub async fn password_login_with_cookie_true_gives_cookies_not_a_refresh_token(s: &Server) {
    let (name, _) = password_member(s).await;
    let login = |body, origin| login_at(s, "/api/auth/login", body, origin);
    let creds = serde_json::json!({"username": name, "password": "correct horse", "cookie": true});
    let a = login(creds.clone(), Some(s.http(""))).await;
    assert_eq!(a.status, 200, "{a:?}");
    let body = a.json();
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert!(body["access_token"].is_string(), "{body}");
    let mut session = Session::from_answer(&a);
    assert_eq!(body["csrf_token"], session.csrf.as_str(), "{body}");
    let access = session.refresh(s).await;
    assert_eq!(me(s, &access).await["username"], name.as_str());

    // A cookie registration alike.
    let registered = login_at(
        s,
        "/api/auth/register",
        serde_json::json!({"username": unique("ck"), "password": "correct horse", "cookie": true}),
        Some(s.http("")),
    )
    .await;
    assert_eq!(registered.status, 201, "{registered:?}");
    assert!(
        registered.json().get("refresh_token").is_none(),
        "{registered:?}"
    );
    Session::from_answer(&registered).refresh(s).await;
    login_at(
        s,
        "/api/auth/register",
        serde_json::json!({"username": unique("ck"), "password": "correct horse", "cookie": true}),
        Some("https://evil.example".into()),
    )
    .await
    .assert_refused(403, "cross_site", "a cookie registration from another site");

    // Another site cannot sign the browser in (to an attacker's account).
    login(creds, Some("https://evil.example".into()))
        .await
        .assert_refused(403, "cross_site", "a cookie login from another site");

    // The JSON flow is unchanged: the refresh token in the body, no cookie read or set.
    let a = login(
        serde_json::json!({"username": name, "password": "correct horse"}),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.cookies.is_empty(), "{a:?}");
    let refresh = a.json()["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned();
    let resp = http_no_redirects()
        .post(s.http("/api/auth/refresh"))
        .header("cookie", session.cookie_header())
        .json(&serde_json::json!({"refresh_token": refresh}))
        .send()
        .await
        .expect("POST refresh");
    let a = Answer::of(resp).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        a.cookies.is_empty() && a.json()["refresh_token"].is_string(),
        "{a:?}"
    );
    // ...and the cookie session was not touched by it.
    session.refresh(s).await;
}
