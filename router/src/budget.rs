//! How many retries the router may make: a budget, so that retries never multiply load
//! when nodes fail (the retry storm Finagle's and Envoy's budgets exist for).
//!
//! Every request earns [`RetryBudget::RATIO`] of a retry; a retry spends one. On top, a
//! floor of [`RetryBudget::FLOOR_PER_SECOND`] retries a second is always allowed, so a
//! quiet router still fails over. Savings are capped, so a long calm does not pay for a
//! storm. Pure: time comes in as an argument.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RetryBudget {
    tokens: f64,
    last: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self { tokens: Self::CAP, last: Duration::ZERO }
    }
}

impl RetryBudget {
    /// Retries earned per request.
    pub const RATIO: f64 = 0.2;
    /// Retries a second allowed whatever the traffic.
    pub const FLOOR_PER_SECOND: f64 = 10.0;
    /// Most retries saved up.
    pub const CAP: f64 = 100.0;
    /// Most nodes one request is tried on.
    pub const MAX_ATTEMPTS: usize = 3;

    /// A request came in at `at`.
    pub fn deposit(&mut self, at: Duration) {
        self.refill(at);
        self.tokens = (self.tokens + Self::RATIO).min(Self::CAP);
    }

    /// Whether a retry may go out at `at` (and if so, it is spent).
    pub fn withdraw(&mut self, at: Duration) -> bool {
        self.refill(at);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, at: Duration) {
        let elapsed = at.saturating_sub(self.last).as_secs_f64();
        self.last = self.last.max(at);
        self.tokens = (self.tokens + elapsed * Self::FLOOR_PER_SECOND).min(Self::CAP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_bounded_by_a_share_of_requests_plus_a_floor() {
        let mut budget = RetryBudget::default();
        let mut at = Duration::ZERO;
        // Spend the saved-up tokens first.
        while budget.withdraw(at) {}
        // Then 10 s of 1,000 requests a second, each wanting a retry.
        let (mut requests, mut retries) = (0, 0);
        for _ in 0..10_000 {
            at += Duration::from_millis(1);
            budget.deposit(at);
            requests += 1;
            if budget.withdraw(at) {
                retries += 1;
            }
        }
        // 20 % of 10,000 plus 10/s over 10 s.
        assert!((2_000..=2_101).contains(&retries), "{retries} retries for {requests} requests");
    }

    #[test]
    fn a_quiet_router_can_still_retry() {
        let mut budget = RetryBudget::default();
        while budget.withdraw(Duration::ZERO) {}
        assert!(!budget.withdraw(Duration::ZERO));
        assert!(budget.withdraw(Duration::from_millis(100)), "the floor refills 1 per 100 ms");
    }

    #[test]
    fn savings_are_capped() {
        let mut budget = RetryBudget::default();
        let at = Duration::from_secs(3600);
        let mut spent = 0;
        while budget.withdraw(at) {
            spent += 1;
        }
        assert_eq!(spent, RetryBudget::CAP as usize);
    }
}
