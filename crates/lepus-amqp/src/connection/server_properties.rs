//! The broker's `server-properties`, kept encoded until someone asks for them.
//!
//! Decoded, RabbitMQ's properties are two maps of some twenty entries: about 2 KiB a
//! connection that almost nobody reads (a status page, a log line at startup). Encoded
//! they are a few hundred bytes, and decoding them again on the first call is cheap.
//! Connections to the same broker get the same bytes, so they share one copy: the last
//! encoding seen is kept (weakly) and reused while it matches.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use amq_protocol::frame::WriteContext;
use amq_protocol::types::FieldTable;

pub(super) struct ServerProperties {
    encoded: Arc<[u8]>,
    decoded: OnceLock<FieldTable>,
}

/// The encoding the latest connection got, while any connection still holds it.
static LATEST: Mutex<Option<Weak<[u8]>>> = Mutex::new(None);

/// `encoded` as one shared copy: the latest one if it has the same bytes.
fn shared(encoded: Vec<u8>) -> Arc<[u8]> {
    shared_in(&LATEST, encoded)
}

fn shared_in(latest: &Mutex<Option<Weak<[u8]>>>, encoded: Vec<u8>) -> Arc<[u8]> {
    let mut latest = latest.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(known) = latest.as_ref().and_then(Weak::upgrade)
        && *known == *encoded
    {
        return known;
    }
    let fresh: Arc<[u8]> = Arc::from(encoded);
    *latest = Some(Arc::downgrade(&fresh));
    fresh
}

impl ServerProperties {
    pub(super) fn new(table: &FieldTable) -> Self {
        let encoded =
            amq_protocol::types::generation::gen_field_table(table)(WriteContext::from(Vec::new()))
                .map(|written| shared(written.into_inner().0));
        match encoded {
            Ok(encoded) => Self {
                encoded,
                decoded: OnceLock::new(),
            },
            // Cannot happen for a table we decoded ourselves; keep it decoded if it does.
            Err(_) => Self {
                encoded: Arc::from(Vec::new()),
                decoded: OnceLock::from(table.clone()),
            },
        }
    }

    pub(super) fn get(&self) -> &FieldTable {
        self.decoded.get_or_init(|| {
            // Our own encoding of a table the handshake decoded (past the decoder's depth
            // guard), so it decodes; an empty table is the panic-free fallback.
            amq_protocol::types::parsing::parse_field_table(&self.encoded[..])
                .map(|(_, table)| table)
                .unwrap_or_default()
        })
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol::types::{AMQPValue, LongString, ShortString};

    use super::*;

    #[test]
    fn properties_come_back_as_they_were() {
        let mut caps = FieldTable::default();
        caps.insert(
            ShortString::from("publisher_confirms"),
            AMQPValue::Boolean(true),
        );
        let mut table = FieldTable::default();
        table.insert(
            "product".into(),
            AMQPValue::LongString(LongString::from("RabbitMQ")),
        );
        table.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        let props = ServerProperties::new(&table);
        assert!(
            props.decoded.get().is_none(),
            "decoded before it was asked for"
        );
        assert_eq!(props.get(), &table);
    }

    #[test]
    fn connections_to_one_broker_share_one_copy() {
        // A slot of its own: other tests in this process use the global one.
        let slot = Mutex::new(None);
        let one = shared_in(&slot, vec![1, 2, 3]);
        let two = shared_in(&slot, vec![1, 2, 3]);
        assert!(Arc::ptr_eq(&one, &two));
        let three = shared_in(&slot, vec![4, 5]);
        assert!(!Arc::ptr_eq(&one, &three));
        assert_eq!(&three[..], &[4, 5]);
        // Once no connection holds it, the copy goes.
        drop((one, two));
        let four = shared_in(&slot, vec![1, 2, 3]);
        assert_eq!(&four[..], &[1, 2, 3]);
        drop((three, four));
        let gone = slot.lock().unwrap_or_else(|p| p.into_inner());
        assert!(gone.as_ref().and_then(Weak::upgrade).is_none());
    }
}
