//! [`HandshakeSlots`]: the bound on connections that are still in their handshake (TLS, HTTP head,
//! authentication, upgrade), in total and per source address.
//!
//! Half-open connections cost the server TLS state and a task until the handshake timeout, yet give it nothing.
//! Counting them against the established-connection limit would let a few idle TCP connections lock real clients
//! out, so they get their own, smaller budget: a connection takes a slot when it is accepted and gives it back
//! when its handshake ends either way; one that finds no slot is dropped at once, before any TLS work. Addresses
//! are grouped as the login throttle groups them (one IPv4 address, one IPv6 /64), so one host cannot take
//! every slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::source_key;

/// In-flight handshakes of one listener: a total cap and a per-address cap. Cheap to clone.
#[derive(Clone, Debug)]
pub struct HandshakeSlots {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    total: Arc<Semaphore>,
    per_address: usize,
    /// Handshakes in flight per address group; an entry is removed when its count returns to zero, so the map
    /// never holds more entries than there are slots.
    by_address: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection got no handshake slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoSlot {
    /// Every handshake slot of the listener is taken.
    #[error("too many handshakes in progress")]
    Total,
    /// The connection's address (or IPv6 /64) already has its share of handshakes in progress.
    #[error("too many handshakes in progress from this address")]
    PerAddress,
}

/// A handshake slot, given back when dropped.
#[derive(Debug)]
pub struct HandshakeSlot {
    inner: Arc<Inner>,
    key: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl HandshakeSlots {
    /// Allows `total` handshakes at once, at most `per_address` of them from one address group (both at least 1).
    pub fn new(total: usize, per_address: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                total: Arc::new(Semaphore::new(total.clamp(1, Semaphore::MAX_PERMITS))),
                per_address: per_address.max(1),
                by_address: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Takes a slot for a handshake from `peer`, or says why there is none.
    pub fn try_acquire(&self, peer: IpAddr) -> Result<HandshakeSlot, NoSlot> {
        let key = source_key(peer);
        let mut by_address = self.inner.by_address.lock();
        let in_flight = by_address.get(&key).copied().unwrap_or(0);
        if in_flight >= self.inner.per_address {
            return Err(NoSlot::PerAddress);
        }
        let permit = self
            .inner
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| NoSlot::Total)?;
        by_address.insert(key, in_flight + 1);
        Ok(HandshakeSlot {
            inner: self.inner.clone(),
            key,
            _permit: permit,
        })
    }

    /// Handshakes in progress from `peer`'s address group.
    pub fn in_flight(&self, peer: IpAddr) -> usize {
        self.inner
            .by_address
            .lock()
            .get(&source_key(peer))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut by_address = self.inner.by_address.lock();
        if let Some(count) = by_address.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                by_address.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn per_address_cap_leaves_room_for_other_addresses() {
        let slots = HandshakeSlots::new(3, 2);
        let a1 = slots.try_acquire(ip("127.0.0.2"));
        let a2 = slots.try_acquire(ip("127.0.0.2"));
        assert!(a1.is_ok() && a2.is_ok());
        assert_eq!(
            slots.try_acquire(ip("127.0.0.2")).err(),
            Some(NoSlot::PerAddress)
        );
        let b = slots.try_acquire(ip("127.0.0.3"));
        assert!(b.is_ok());
        assert_eq!(
            slots.try_acquire(ip("127.0.0.4")).err(),
            Some(NoSlot::Total)
        );
        drop(a1);
        assert_eq!(slots.in_flight(ip("127.0.0.2")), 1);
        assert!(slots.try_acquire(ip("127.0.0.2")).is_ok());
    }

    #[test]
    fn ipv6_addresses_of_one_64_share_a_budget_and_entries_are_removed_at_zero() {
        let slots = HandshakeSlots::new(10, 1);
        let first = slots.try_acquire(ip("2001:db8:1:2::1"));
        assert!(first.is_ok());
        assert_eq!(
            slots.try_acquire(ip("2001:db8:1:2:ffff::9")).err(),
            Some(NoSlot::PerAddress)
        );
        assert!(slots.try_acquire(ip("2001:db8:1:3::1")).is_ok());
        drop(first);
        assert!(slots.inner.by_address.lock().is_empty());
    }
}
