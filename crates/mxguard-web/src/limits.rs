//! What keeps a public checker from being turned against others or
//! against itself: a per-client rate limit and a cap on checks at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The unit a limit applies to: an IPv4 address, or an IPv6 /64 (one
/// subscriber's LAN: anyone with a /64 could otherwise pick a fresh address
/// for every request).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The most clients remembered; past it the oldest-refilled are dropped
/// (they would have had full buckets again anyway, or nearly).
const MAX_CLIENTS: usize = 50_000;

/// A token bucket per client ([`client_key`]): `per_minute` checks a
/// minute, up to `burst` at once.
#[derive(Debug)]
pub struct RateLimit {
    per_minute: f64,
    burst: f64,
    state: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    map: HashMap<IpAddr, (f64, Instant)>,
    swept: Instant,
}

impl RateLimit {
    pub fn new(per_minute: u32, burst: u32) -> RateLimit {
        RateLimit {
            per_minute: f64::from(per_minute.max(1)),
            burst: f64::from(burst.max(1)),
            state: Mutex::new(Buckets {
                map: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    /// Takes one token for `client`, or says how long until one is there.
    pub fn take(&self, client: IpAddr) -> Result<(), Duration> {
        let key = client_key(client);
        let now = Instant::now();
        let rate = self.per_minute / 60.0;
        let full = Duration::from_secs_f64(self.burst / rate);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // Now and then (at most once per refill time), forget the clients
        // whose bucket is full again: they are as good as new.
        if now.duration_since(st.swept) >= full || st.map.len() >= MAX_CLIENTS {
            st.map.retain(|_, (_, at)| now.duration_since(*at) < full);
            st.swept = now;
            if st.map.len() >= MAX_CLIENTS {
                // Still full of active clients: make room for this one.
                if let Some(oldest) = st
                    .map
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| *k)
                {
                    st.map.remove(&oldest);
                }
            }
        }
        let (tokens, at) = st.map.entry(key).or_insert((self.burst, now));
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

/// Checks running per client ([`client_key`]): one client cannot hold every
/// place of [`Capacity`].
#[derive(Debug, Default)]
pub struct PerClient {
    running: Mutex<HashMap<IpAddr, usize>>,
}

/// A client's running check; its place is given back when dropped.
#[derive(Debug)]
pub struct ClientSlot {
    owner: Arc<PerClient>,
    key: IpAddr,
}

impl PerClient {
    /// A place for `client` if it has fewer than `max` checks running.
    pub fn try_start(self: &Arc<Self>, client: IpAddr, max: usize) -> Option<ClientSlot> {
        let key = client_key(client);
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let n = running.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            owner: self.clone(),
            key,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut running = self.owner.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = running.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_64_is_one_client() {
        let rl = RateLimit::new(60, 2);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(rl.take(a).is_ok());
        assert!(rl.take(b).is_ok());
        assert!(rl.take(a).is_err(), "the /64 has used its burst");
        assert!(rl.take(other).is_ok());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_client_has_at_most_its_share_of_running_checks() {
        let pc = Arc::new(PerClient::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let one = pc.try_start(ip, 2).unwrap();
        let _two = pc.try_start(ip, 2).unwrap();
        assert!(pc.try_start(ip, 2).is_none());
        assert!(pc.try_start("192.0.2.2".parse().unwrap(), 2).is_some());
        drop(one);
        assert!(pc.try_start(ip, 2).is_some());
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
