//! Which publish a `basic.return` hands back.
//!
//! A return carries the exchange, the routing key and the whole message, but no delivery
//! tag, and the broker may coalesce confirms: between a return and the ack of its publish
//! there can be acks of other publishes (a single ack of an earlier message confirmed by
//! its queue in the same batch, or a `multiple` ack). So neither "the next ack" nor "the
//! earliest publish with this routing key and message id" names the right publish when
//! messages share a routing key and have no id, or the same one (a headers exchange routes
//! on headers alone, so routable and unroutable messages can share everything else).
//!
//! Each unconfirmed `mandatory` publish therefore keeps two fingerprints, computed from
//! what was encoded anyway: one of (exchange, routing key), one of (exchange, routing
//! key, encoded properties, body length, first and last bytes of the body). A return goes
//! to the earliest unconfirmed mandatory publish with the same content fingerprint that has
//! no return yet (returns come in publish order); if none has it (a broker that rewrote the
//! properties), to the earliest one with the same route. Two publishes can then only be
//! confused when they are identical in all of that and their routing still differed (a
//! binding changed between them): the message handed back is the same either way.
//!
//! Without confirm mode there is no per-publish future to resolve, so returns cannot be
//! matched at all; they are logged and dropped.
//!
//! Cost: two 64-bit hashes over at most a few hundred bytes per mandatory publish, no
//! allocation (the former match key was three owned strings per publish).

use std::hash::{Hash, Hasher};

/// How many bytes from each end of the body go into the fingerprint.
const BODY_EDGE: usize = 32;

/// The fingerprints of one mandatory publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    pub(crate) route: u64,
    pub(crate) content: u64,
}

impl Fingerprint {
    /// `properties` is the encoded property list (flags and values) of the content header.
    pub(crate) fn new(exchange: &str, routing_key: &str, properties: &[u8], body: &[u8]) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        exchange.hash(&mut h);
        routing_key.hash(&mut h);
        let route = h.finish();
        properties.hash(&mut h);
        body.len().hash(&mut h);
        let head = body.get(..BODY_EDGE).unwrap_or(body);
        let tail = body
            .get(body.len().saturating_sub(BODY_EDGE)..)
            .unwrap_or(body);
        head.hash(&mut h);
        tail.hash(&mut h);
        Self {
            route,
            content: h.finish(),
        }
    }
}

/// The index of the publish a return belongs to, among `(fingerprint, has_return)` of the
/// unconfirmed publishes in publish order (`None` for a publish that was not mandatory).
pub(crate) fn owner(
    returned: Fingerprint,
    pending: impl Iterator<Item = (Option<Fingerprint>, bool)> + Clone,
) -> Option<usize> {
    let free = |(f, taken): (Option<Fingerprint>, bool)| f.filter(|_| !taken);
    pending
        .clone()
        .position(|p| free(p).is_some_and(|f| f.content == returned.content))
        .or_else(|| {
            pending
                .clone()
                .position(|p| free(p).is_some_and(|f| f.route == returned.route))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_wins_over_order_and_route_is_the_fallback() {
        let a = Fingerprint::new("ex", "k", b"props-a", b"body");
        let b = Fingerprint::new("ex", "k", b"props-b", b"body");
        assert_eq!(a.route, b.route);
        assert_ne!(a.content, b.content);
        let pending = [(Some(a), false), (None, false), (Some(b), false)];
        assert_eq!(owner(b, pending.iter().copied()), Some(2));
        assert_eq!(owner(a, pending.iter().copied()), Some(0));
        // Taken ones are skipped; an unknown content falls back to the route.
        let taken = [(Some(a), true), (None, false), (Some(b), false)];
        assert_eq!(owner(a, taken.iter().copied()), Some(2));
        let other = Fingerprint::new("ex", "other", b"props-a", b"body");
        assert_eq!(owner(other, pending.iter().copied()), None);
    }

    #[test]
    fn bodies_differing_at_either_end_or_in_length_differ() {
        let base = vec![0u8; 1000];
        let mut head = base.clone();
        head[0] = 1;
        let mut tail = base.clone();
        tail[999] = 1;
        let f = |b: &[u8]| Fingerprint::new("", "q", b"", b).content;
        assert_ne!(f(&base), f(&head));
        assert_ne!(f(&base), f(&tail));
        assert_ne!(f(&base), f(&base[..999]));
        assert_eq!(f(&base), f(&base.clone()));
    }
}
