//! A sliding-window rate counter: rooms (chat, cursors), Multiplayer Piano sessions and the
//! account endpoints each keep one per sender, and pass `now` in (sans-I/O).

use crate::Millis;
use std::collections::VecDeque;

/// At most `max` events per `window_ms` (a sliding window).
#[derive(Debug, Clone, Default)]
pub struct RateWindow {
    times: VecDeque<Millis>,
}

impl RateWindow {
    /// Records an event at `now` if allowed; otherwise `Err(ms until one is allowed)`.
    pub fn try_take(&mut self, max: usize, window_ms: u64, now: Millis) -> Result<(), u64> {
        while self.times.front().is_some_and(|&t| t + window_ms <= now) {
            self.times.pop_front();
        }
        if self.times.len() >= max {
            let oldest = self.times.front().copied().unwrap_or(now);
            return Err(oldest + window_ms - now);
        }
        self.times.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_window() {
        let mut w = RateWindow::default();
        for t in 0..4 {
            assert_eq!(w.try_take(4, 6000, t), Ok(()));
        }
        assert_eq!(w.try_take(4, 6000, 10), Err(5990));
        assert_eq!(w.try_take(4, 6000, 6000), Ok(()));
    }
}
