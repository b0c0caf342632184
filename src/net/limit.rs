//! Per-client limits on the SMTP listener (`[smtp.client_limits]`): open connections,
//! messages and recipients per period, each counted per client IP address, so that one
//! client cannot take the whole listener. Rates are governor's keyed GCRA limiters: a rate
//! of `100/min` lets a burst of 100 through and then one every 0.6 s. Owns the counting;
//! the replies (421 / 450 4.7.1, as Postfix's anvil gives them) are ingest's.

use crate::config::{ClientLimitsConfig, Rate};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub struct ClientLimits {
    max_connections: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
    messages: Option<DefaultKeyedRateLimiter<IpAddr>>,
    recipients: Option<DefaultKeyedRateLimiter<IpAddr>>,
    checks: AtomicU64,
}

/// Holds one of a client's connection slots; dropping it gives the slot back.
pub struct Slot {
    limits: Arc<ClientLimits>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().expect("client limits lock");
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

fn keyed(rate: Option<Rate>) -> Option<DefaultKeyedRateLimiter<IpAddr>> {
    let rate = rate?;
    let burst = NonZeroU32::new(rate.count).unwrap_or(NonZeroU32::MIN);
    let period = (rate.per / rate.count.max(1)).max(std::time::Duration::from_nanos(1));
    let quota = Quota::with_period(period)?.allow_burst(burst);
    Some(RateLimiter::keyed(quota))
}

/// How often the rate limiters forget clients that have gone quiet.
const SWEEP_EVERY: u64 = 4096;

impl ClientLimits {
    pub fn new(config: &ClientLimitsConfig) -> Arc<ClientLimits> {
        Arc::new(ClientLimits {
            max_connections: config.connections,
            open: Mutex::new(HashMap::new()),
            messages: keyed(config.messages),
            recipients: keyed(config.recipients),
            checks: AtomicU64::new(0),
        })
    }

    /// A connection slot for `ip`, or `None` when it has all it may have open.
    pub fn connect(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().expect("client limits lock");
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max_connections {
            return None;
        }
        *n += 1;
        Some(Slot {
            limits: self.clone(),
            ip,
        })
    }

    /// Counts one message from `ip`; `false` when it is over its rate.
    pub fn message(&self, ip: IpAddr) -> bool {
        self.check(self.messages.as_ref(), ip)
    }

    /// Counts one recipient from `ip`; `false` when it is over its rate.
    pub fn recipient(&self, ip: IpAddr) -> bool {
        self.check(self.recipients.as_ref(), ip)
    }

    fn check(&self, limiter: Option<&DefaultKeyedRateLimiter<IpAddr>>, ip: IpAddr) -> bool {
        let Some(limiter) = limiter else {
            return true;
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
        }
        limiter.check_key(&ip).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(connections: usize, messages: &str) -> Arc<ClientLimits> {
        ClientLimits::new(&ClientLimitsConfig {
            connections,
            messages: Some(messages.parse().unwrap()),
            recipients: None,
            exempt_trusted: false,
        })
    }

    #[test]
    fn connections_per_address_come_back_when_closed() {
        let l = limits(2, "10/min");
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = l.connect(a).unwrap();
        let _second = l.connect(a).unwrap();
        assert!(l.connect(a).is_none(), "a third from the same address");
        assert!(l.connect(b).is_some(), "another address has its own count");
        drop(first);
        assert!(l.connect(a).is_some(), "the slot came back");
    }

    #[test]
    fn message_rate_is_a_burst_then_the_period() {
        let l = limits(1, "3/min");
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(
            (0..5).map(|_| l.message(a)).collect::<Vec<_>>(),
            [true, true, true, false, false]
        );
        assert!(l.message(b));
        assert!(l.recipient(a), "no recipient limit configured");
    }
}
