//! How messages look on a terminal and in JSON: text bodies as text, anything else
//! escaped (or base64 in JSON), headers with their AMQP types flattened to plain values.

use base64::Engine as _;
use lepus::amqp::{AMQPValue, BasicProperties, Delivery, FieldTable, ShortString};
use serde_json::{Map, Value, json};

/// A body that prints as it is: valid UTF-8 without control characters other than
/// newlines and tabs.
pub(crate) fn as_text(body: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(body).ok()?;
    text.chars()
        .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'))
        .then_some(text)
}

/// Bytes with everything outside printable ASCII as `\xNN` (and `\n`, `\t`, `\\`).
pub(crate) fn escape(bytes: &[u8]) -> String {
    bytes
        .iter()
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect()
}

/// One AMQP value as JSON: numbers as numbers, strings as strings (or escaped bytes when
/// not UTF-8), tables as objects.
pub(crate) fn value_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Float(n) => json!(n),
        AMQPValue::Double(n) => json!(n),
        AMQPValue::DecimalValue(d) => {
            let value = f64::from(d.value) / 10f64.powi(i32::from(d.scale));
            json!(value)
        }
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => bytes_json(s.as_bytes()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_json).collect()),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldTable(t) => table_json(t),
        AMQPValue::ByteArray(b) => bytes_json(b.as_slice()),
        AMQPValue::Void => Value::Null,
    }
}

fn bytes_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => json!(s),
        Err(_) => json!(escape(bytes)),
    }
}

/// A field table as a JSON object.
pub(crate) fn table_json(table: &FieldTable) -> Value {
    let map: Map<String, Value> = table
        .into_iter()
        .map(|(k, v)| (k.as_str().to_owned(), value_json(v)))
        .collect();
    Value::Object(map)
}

/// A field table as `key=value` pairs for a terminal.
pub(crate) fn table_text(table: &FieldTable) -> String {
    table
        .into_iter()
        .map(|(k, v)| match value_json(v) {
            Value::String(s) => format!("{}={s}", k.as_str()),
            other => format!("{}={other}", k.as_str()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every property a message has, except the headers, as a JSON object (absent ones left
/// out; `type` is the AMQP `type` property).
pub(crate) fn properties_json(props: &BasicProperties) -> Value {
    let mut obj = Map::new();
    let mut text = |key: &str, value: &Option<ShortString>| {
        if let Some(v) = value {
            obj.insert(key.into(), json!(v.as_str()));
        }
    };
    text("content_type", props.content_type());
    text("content_encoding", props.content_encoding());
    text("correlation_id", props.correlation_id());
    text("reply_to", props.reply_to());
    text("expiration", props.expiration());
    text("message_id", props.message_id());
    text("type", props.kind());
    text("user_id", props.user_id());
    text("app_id", props.app_id());
    text("cluster_id", props.cluster_id());
    if let Some(mode) = props.delivery_mode() {
        obj.insert("delivery_mode".into(), json!(mode));
    }
    if let Some(priority) = props.priority() {
        obj.insert("priority".into(), json!(priority));
    }
    if let Some(timestamp) = props.timestamp() {
        obj.insert("timestamp".into(), json!(timestamp));
    }
    Value::Object(obj)
}

/// A delivery as one JSON object (one line of `lepus consume --json`).
pub(crate) fn delivery_json(delivery: &Delivery) -> Value {
    let props = delivery.properties();
    let mut obj = Map::new();
    obj.insert("exchange".into(), json!(delivery.exchange()));
    obj.insert("routing_key".into(), json!(delivery.routing_key()));
    obj.insert("redelivered".into(), json!(delivery.redelivered()));
    obj.insert(
        "message_id".into(),
        json!(props.message_id().as_ref().map(|m| m.as_str())),
    );
    obj.insert(
        "content_type".into(),
        json!(props.content_type().as_ref().map(|m| m.as_str())),
    );
    obj.insert("timestamp".into(), json!(props.timestamp()));
    obj.insert(
        "headers".into(),
        props
            .headers()
            .as_ref()
            .map(table_json)
            .unwrap_or_else(|| json!({})),
    );
    let body = delivery.body();
    match as_text(body) {
        Some(text) => {
            obj.insert("body".into(), json!(text));
        }
        None => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(body);
            obj.insert("body_base64".into(), json!(encoded));
        }
    }
    Value::Object(obj)
}

/// A delivery as a few lines of text: a header line, the headers, then the body (escaped
/// if binary).
pub(crate) fn delivery_text(n: u64, delivery: &Delivery) -> String {
    let props = delivery.properties();
    let id = props
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "-".into());
    let mut out = format!(
        "--- #{n} routing key '{}' exchange '{}' message id {id}{}\n",
        delivery.routing_key(),
        delivery.exchange(),
        if delivery.redelivered() {
            " (redelivered)"
        } else {
            ""
        },
    );
    if let Some(ct) = props.content_type() {
        out.push_str(&format!("content type: {}\n", ct.as_str()));
    }
    if let Some(headers) = props.headers().as_ref().filter(|h| !h.inner().is_empty()) {
        out.push_str(&format!("headers: {}\n", table_text(headers)));
    }
    match as_text(delivery.body()) {
        Some(text) => out.push_str(text),
        None => {
            out.push_str(&format!("(binary, {} bytes) ", delivery.body().len()));
            out.push_str(&escape(delivery.body()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_bodies_stay_text_and_binary_ones_are_escaped() {
        assert_eq!(as_text(b"hello\nworld\t!"), Some("hello\nworld\t!"));
        assert_eq!(as_text(b"\x00\x01"), None);
        assert_eq!(as_text(&[0xff, 0xfe]), None);
        assert_eq!(escape(b"a\x00\xffb"), "a\\x00\\xffb");
    }

    #[test]
    fn headers_flatten_to_plain_json() {
        let mut inner = FieldTable::default();
        inner.insert(ShortString::from("n"), AMQPValue::LongInt(-3));
        let mut table = FieldTable::default();
        table.insert(ShortString::from("s"), AMQPValue::LongString("v".into()));
        table.insert(ShortString::from("t"), AMQPValue::FieldTable(inner));
        table.insert(
            ShortString::from("a"),
            AMQPValue::FieldArray(vec![AMQPValue::Boolean(true)].into()),
        );
        let v = table_json(&table);
        assert_eq!(v, json!({"s": "v", "t": {"n": -3}, "a": [true]}));
        assert_eq!(table_text(&table), r#"a=[true], s=v, t={"n":-3}"#);
    }

    #[test]
    fn properties_show_only_what_is_set() {
        let props = BasicProperties::default()
            .with_message_id(ShortString::from("m-1"))
            .with_delivery_mode(2)
            .with_type(ShortString::from("order"))
            .with_timestamp(7);
        assert_eq!(
            properties_json(&props),
            json!({"message_id": "m-1", "delivery_mode": 2, "type": "order", "timestamp": 7})
        );
    }
}
