//! What keeps a public checker from being turned against others or
//! against itself: a per-client rate limit and a cap on checks at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A token bucket per client address: `per_minute` checks a minute, up to
/// `burst` at once.
#[derive(Debug)]
pub struct RateLimit {
    per_minute: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimit {
    pub fn new(per_minute: u32, burst: u32) -> RateLimit {
        RateLimit {
            per_minute: f64::from(per_minute.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `client`, or says how long until one is there.
    pub fn take(&self, client: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let rate = self.per_minute / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        // Forget clients whose bucket has long been full again.
        if buckets.len() > 10_000 {
            let full = Duration::from_secs_f64(self.burst / rate);
            buckets.retain(|_, (_, at)| now.duration_since(*at) < full);
        }
        let (tokens, at) = buckets.entry(client).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }
}

/// At most `n` checks run at once; the next one is turned away rather than
/// queued, so that a flood cannot hold connections open.
#[derive(Debug, Clone)]
pub struct Capacity(Arc<Semaphore>);

impl Capacity {
    pub fn new(n: usize) -> Capacity {
        Capacity(Arc::new(Semaphore::new(n.max(1))))
    }

    pub fn try_start(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}
