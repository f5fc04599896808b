//! Members' activity totals in their Account object's SQLite (`GET /api/users/{id}/stats`
//! without MongoDB): Room objects add each hand-over of a member's activity
//! (`POST /stats`, a `StatsDelta`: `Room::add_to_account`), the worker reads the totals (`GET /stats`). One row; an
//! object nobody played as is never written (a read creates nothing). Guests have no Account
//! object and keep nothing.

use piano_core::analytics::UserTotals;
use piano_core::room::StatsDelta;
use worker::*;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS activity (id INTEGER PRIMARY KEY CHECK (id = 1), notes INTEGER NOT NULL, chats INTEGER NOT NULL, joins INTEGER NOT NULL, played_ms INTEGER NOT NULL, last_seen INTEGER NOT NULL)";

/// The Account object's `/stats` routes.
pub async fn serve(sql: &SqlStorage, req: &mut Request) -> Result<Response> {
    match req.method() {
        Method::Post => {
            let d: StatsDelta = req.json().await?;
            sql.exec(SCHEMA, None)?;
            sql.exec(
                "INSERT INTO activity (id, notes, chats, joins, played_ms, last_seen) VALUES (1, ?, ?, ?, ?, ?)
                 ON CONFLICT(id) DO UPDATE SET notes = notes + excluded.notes, chats = chats + excluded.chats,
                   joins = joins + excluded.joins, played_ms = played_ms + excluded.played_ms,
                   last_seen = MAX(last_seen, excluded.last_seen)",
                vec![
                    (d.notes as i64).into(),
                    (d.chats as i64).into(),
                    (d.joins as i64).into(),
                    (d.played_ms as i64).into(),
                    (d.last_seen as i64).into(),
                ],
            )?;
            Ok(Response::empty()?.with_status(204))
        }
        Method::Get => {
            #[derive(serde::Deserialize)]
            struct Row {
                notes: i64,
                chats: i64,
                joins: i64,
                played_ms: i64,
                last_seen: i64,
            }
            // No table yet: nothing was ever added (reading creates nothing).
            let row: Option<Row> = sql
                .exec(
                    "SELECT notes, chats, joins, played_ms, last_seen FROM activity WHERE id = 1",
                    None,
                )
                .and_then(|c| c.to_array::<Row>())
                .ok()
                .and_then(|rows| rows.into_iter().next());
            let n = |v: i64| v.max(0) as u64;
            Response::from_json(
                &row.map(|r| {
                    UserTotals::stored(
                        n(r.notes),
                        n(r.chats),
                        n(r.joins),
                        n(r.played_ms),
                        n(r.last_seen),
                    )
                })
                .unwrap_or_default(),
            )
        }
        _ => Response::error("method not allowed", 405),
    }
}
