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
//! Cost: one pass of a small word hash over the names, the encoded properties and at most
//! 64 body bytes per mandatory publish in confirm mode, and no allocation. Measured on a
//! busy 2-core machine (60 bytes of properties, a 100-byte body): 110-130 ns, against
//! 70-90 ns for the three owned strings the former match key allocated and freed, and
//! 180-300 ns for std's SipHash over the same bytes.

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
        let mut h = Mix(0);
        h.field(exchange.as_bytes());
        h.field(routing_key.as_bytes());
        let route = h.finish();
        h.field(properties);
        h.word(body.len() as u64);
        if body.len() <= 2 * BODY_EDGE {
            h.field(body);
        } else {
            h.field(body.get(..BODY_EDGE).unwrap_or_default());
            h.field(body.get(body.len() - BODY_EDGE..).unwrap_or_default());
        }
        Self {
            route,
            content: h.finish(),
        }
    }
}

/// A small multiply-rotate hash over 8-byte words (see the cost above). Not collision resistant
/// against an adversary, which it need not be: a collision only matters between two
/// unconfirmed publishes of the same sender.
struct Mix(u64);

impl Mix {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;

    fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(23) ^ w).wrapping_mul(Self::K);
    }

    /// Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
    fn field(&mut self, bytes: &[u8]) {
        self.word(bytes.len() as u64);
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.word(u64::from_le_bytes(w.try_into().unwrap_or_default()));
        }
        let mut last = [0u8; 8];
        let rest = words.remainder();
        if let Some(dst) = last.get_mut(..rest.len()) {
            dst.copy_from_slice(rest);
        }
        self.word(u64::from_le_bytes(last));
    }

    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^ (x >> 33)
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
        .or_else(|| owner_by_route(returned.route, pending))
}

/// The earliest unconfirmed mandatory publish to this route without a return yet: for a
/// return whose content is unknown (refused, see `ChannelShared::refuse`).
pub(crate) fn owner_by_route(
    route: u64,
    mut pending: impl Iterator<Item = (Option<Fingerprint>, bool)>,
) -> Option<usize> {
    pending.position(|(f, taken)| !taken && f.is_some_and(|f| f.route == route))
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
