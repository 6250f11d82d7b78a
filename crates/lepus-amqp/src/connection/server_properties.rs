//! The broker's `server-properties`, kept encoded until someone asks for them.
//!
//! Decoded, RabbitMQ's properties are two maps of some twenty entries: about 2 KiB a
//! connection that almost nobody reads (a status page, a log line at startup). Encoded
//! they are a few hundred bytes, and decoding them again on the first call is cheap.

use std::sync::OnceLock;

use amq_protocol::frame::WriteContext;
use amq_protocol::types::FieldTable;

pub(super) struct ServerProperties {
    encoded: Box<[u8]>,
    decoded: OnceLock<FieldTable>,
}

impl ServerProperties {
    pub(super) fn new(table: &FieldTable) -> Self {
        let encoded =
            amq_protocol::types::generation::gen_field_table(table)(WriteContext::from(Vec::new()))
                .map(|written| written.into_inner().0.into_boxed_slice());
        match encoded {
            Ok(encoded) => Self {
                encoded,
                decoded: OnceLock::new(),
            },
            // Cannot happen for a table we decoded ourselves; keep it decoded if it does.
            Err(_) => Self {
                encoded: Box::default(),
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
}
