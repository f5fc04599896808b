//! Identity claims (`piano_core::oauth::link`): the record that makes one external identity
//! (provider + subject) belong to one member account. Each claim lives in its own object of the
//! Account namespace, named `ext:` + the identity key (usernames cannot contain `:`, so no
//! account object has such a name). The worker calls:
//!
//! - `POST /claim {"claim"}`: set if absent; answers the claim held afterwards;
//! - `POST /claim/replace {"from", "to"}`: compare-and-set on the whole claim; `{"done"}`;
//! - `POST /claim/release {"account"}`: delete if it names `account`; 204.
//!
//! The object is single-threaded, but an `await` lets another request in: each operation reads
//! its body first, then runs its statements with no `await` between them, which the runtime
//! commits as one atomic step (no other request can run in the middle).

use piano_core::oauth::link::Claim;
use serde::Deserialize;
use worker::*;

const SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS claim (id INTEGER PRIMARY KEY CHECK (id = 1), data TEXT NOT NULL)";

/// The prefix of a claim object's name.
pub const PREFIX: &str = "ext:";

fn current(sql: &SqlStorage) -> Result<Option<Claim>> {
    #[derive(Deserialize)]
    struct Row {
        data: String,
    }
    // A read creates nothing (a release or replace of a claim nobody made leaves no object).
    if !crate::table_exists(sql, "claim")? {
        return Ok(None);
    }
    let rows: Vec<Row> = sql.exec("SELECT data FROM claim", None)?.to_array()?;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|r| serde_json::from_str(&r.data).ok()))
}

fn write(sql: &SqlStorage, claim: &Claim) -> Result<()> {
    sql.exec(SCHEMA, None)?;
    sql.exec(
        "INSERT INTO claim (id, data) VALUES (1, ?) ON CONFLICT(id) DO UPDATE SET data = excluded.data",
        vec![serde_json::to_string(claim)?.into()],
    )?;
    Ok(())
}

/// The claim routes (the path starts with `/claim`).
pub async fn serve(sql: &SqlStorage, req: &mut Request) -> Result<Response> {
    #[derive(Deserialize)]
    struct Set {
        claim: Claim,
    }
    #[derive(Deserialize)]
    struct Replace {
        from: Claim,
        to: Claim,
    }
    #[derive(Deserialize)]
    struct Release {
        account: String,
    }
    match (req.method(), req.path().as_str()) {
        (Method::Post, "/claim") => {
            let Set { claim } = req.json().await?;
            // From here on no await: set-if-absent and the read are one step.
            let held = match current(sql)? {
                Some(held) => held,
                None => {
                    write(sql, &claim)?;
                    claim
                }
            };
            Response::from_json(&serde_json::json!({ "claim": held }))
        }
        (Method::Post, "/claim/replace") => {
            let r: Replace = req.json().await?;
            let done = current(sql)?.as_ref() == Some(&r.from);
            if done {
                write(sql, &r.to)?;
            }
            Response::from_json(&serde_json::json!({ "done": done }))
        }
        (Method::Post, "/claim/release") => {
            let r: Release = req.json().await?;
            if current(sql)?.is_some_and(|c| c.account == r.account) {
                sql.exec("DELETE FROM claim", None)?;
            }
            Ok(Response::empty()?.with_status(204))
        }
        _ => crate::json_error(404, "not_found", "no such claim route"),
    }
}
