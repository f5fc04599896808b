//! The Limiter Durable Object: a sliding-window counter per key, the edge's local counter of
//! the auth rate limit (one per client network, `auth:<key>`; the policy is
//! `piano_core::account::rate`) and of WebSocket upgrades. In memory only: a limiter that was
//! idle long enough to be evicted had an empty window anyway.

use piano_core::window::RateWindow;
use std::cell::RefCell;
use worker::*;

#[durable_object]
pub struct Limiter {
    window: RefCell<RateWindow>,
}

#[derive(serde::Deserialize)]
struct Hit {
    limit: usize,
    window_ms: u64,
}

impl DurableObject for Limiter {
    fn new(_state: State, _env: Env) -> Self {
        Limiter {
            window: RefCell::new(RateWindow::default()),
        }
    }

    /// `POST /hit {limit, window_ms}` → `{"allowed": bool, "retry_after_ms": n}`.
    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let hit: Hit = req.json().await?;
        let result =
            self.window
                .borrow_mut()
                .try_take(hit.limit, hit.window_ms, Date::now().as_millis());
        Response::from_json(&serde_json::json!({
            "allowed": result.is_ok(),
            "retry_after_ms": result.err().unwrap_or(0),
        }))
    }
}
