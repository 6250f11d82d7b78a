//! The topology as RabbitMQ's definitions JSON, so one file describes a service's
//! exchanges, queues and bindings for lepus, for `rabbitmqctl import_definitions` and for
//! the management API alike.
//!
//! Only the parts of the format a client declares are read and written: `exchanges`,
//! `queues` and `bindings` (users, permissions, policies and the rest belong to the
//! broker's operator, and are ignored on reading). lepus's retry tiers and dead-letter
//! queues are ordinary queues here (`<queue>.retry.<n>` with `x-message-ttl` and a
//! dead-letter target, `<queue>.dlq`), so a file written from a running service carries
//! them as they are. Entries are written sorted, so the same topology always gives the
//! same file.
//!
//! Argument values map between JSON and AMQP field values as the broker does: integers
//! become signed 64-bit integers, other numbers doubles, strings long strings, objects
//! tables and arrays arrays.

use lepus_amqp::{AMQPValue, ExchangeKind, FieldTable};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Binding, Exchange, Queue, QueueType, Topology, long_string};
use crate::error::{Error, ErrorKind, Result};

/// The argument that names a queue's type.
const QUEUE_TYPE_ARG: &str = "x-queue-type";

/// RabbitMQ's definitions document, restricted to what a client declares.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Definitions {
    /// Exchanges (the broker's own, `amq.*` and the default one, are never listed).
    #[serde(default)]
    pub exchanges: Vec<ExchangeDef>,
    /// Queues.
    #[serde(default)]
    pub queues: Vec<QueueDef>,
    /// Bindings of queues and exchanges to exchanges.
    #[serde(default)]
    pub bindings: Vec<BindingDef>,
}

/// One exchange of a definitions document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeDef {
    /// Its name.
    pub name: String,
    /// The virtual host it lives in (absent in a one-vhost export).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
    /// `direct`, `fanout`, `topic`, `headers` or a plugin's type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Survives a restart.
    #[serde(default)]
    pub durable: bool,
    /// Deleted with its last binding.
    #[serde(default)]
    pub auto_delete: bool,
    /// Reachable only through exchange-to-exchange bindings.
    #[serde(default)]
    pub internal: bool,
    /// Declaration arguments.
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// One queue of a definitions document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    /// Its name.
    pub name: String,
    /// The virtual host it lives in (absent in a one-vhost export).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
    /// Survives a restart.
    #[serde(default)]
    pub durable: bool,
    /// Deleted with its last consumer.
    #[serde(default)]
    pub auto_delete: bool,
    /// Declaration arguments (`x-queue-type` among them for quorum queues).
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// One binding of a definitions document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingDef {
    /// The exchange messages come from.
    pub source: String,
    /// The virtual host it lives in (absent in a one-vhost export).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
    /// The queue or exchange bound.
    pub destination: String,
    /// `queue` or `exchange`.
    pub destination_type: String,
    /// The binding key.
    #[serde(default)]
    pub routing_key: String,
    /// Binding arguments (headers exchanges).
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

impl Definitions {
    /// Parses a definitions document (a whole-broker export, a one-vhost export or a file
    /// lepus wrote).
    pub fn from_json(text: &str) -> Result<Definitions> {
        serde_json::from_str(text).map_err(|e| {
            Error::with_source(ErrorKind::Config, "not a RabbitMQ definitions document", e)
        })
    }

    /// The document as pretty JSON, entries sorted, ending with a newline.
    pub fn to_json(&self) -> String {
        let mut sorted = self.clone();
        sorted.sort();
        // Plain data of strings, bools and JSON values: serializing cannot fail.
        let mut text = serde_json::to_string_pretty(&sorted).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Sorts exchanges and queues by name and bindings by source, destination and key.
    pub fn sort(&mut self) {
        self.exchanges
            .sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        self.queues
            .sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        self.bindings.sort_by(|a, b| {
            let key = |x: &BindingDef| {
                (
                    x.vhost.clone(),
                    x.source.clone(),
                    x.destination_type.clone(),
                    x.destination.clone(),
                    x.routing_key.clone(),
                    Value::Object(x.arguments.clone()).to_string(),
                )
            };
            key(a).cmp(&key(b))
        });
    }

    /// Keeps only the entries of `vhost` (entries without a vhost are kept), and drops
    /// the vhost field from each.
    pub fn for_vhost(mut self, vhost: &str) -> Definitions {
        let keep = |v: &Option<String>| v.as_deref().is_none_or(|v| v == vhost);
        self.exchanges.retain(|e| keep(&e.vhost));
        self.queues.retain(|q| keep(&q.vhost));
        self.bindings.retain(|b| keep(&b.vhost));
        self.exchanges.iter_mut().for_each(|e| e.vhost = None);
        self.queues.iter_mut().for_each(|q| q.vhost = None);
        self.bindings.iter_mut().for_each(|b| b.vhost = None);
        self.exchanges
            .retain(|e| !e.name.is_empty() && !e.name.starts_with("amq."));
        self
    }

    /// Sets every entry's vhost (what `rabbitmqctl import_definitions` needs).
    pub fn with_vhost(mut self, vhost: &str) -> Definitions {
        let v = Some(vhost.to_owned());
        self.exchanges.iter_mut().for_each(|e| e.vhost = v.clone());
        self.queues.iter_mut().for_each(|q| q.vhost = v.clone());
        self.bindings.iter_mut().for_each(|b| b.vhost = v.clone());
        self
    }
}

impl Topology {
    /// The topology as a definitions document (no vhost on the entries; see
    /// [`Definitions::with_vhost`]). Server-named queues and their bindings are left out:
    /// their names exist only while their connection does.
    pub fn to_definitions(&self) -> Definitions {
        let server_named: Vec<&str> = self
            .queues
            .iter()
            .filter(|q| q.server_named)
            .map(|q| q.name.as_str())
            .collect();
        let exchanges = self
            .exchanges
            .iter()
            .map(|e| ExchangeDef {
                name: e.name.clone(),
                vhost: None,
                kind: e.kind.as_str().to_owned(),
                durable: e.durable,
                auto_delete: e.auto_delete,
                internal: e.internal,
                arguments: table_to_json(&e.arguments),
            })
            .collect();
        let queues = self
            .queues
            .iter()
            .filter(|q| !q.server_named)
            .map(|q| {
                let mut arguments = table_to_json(&q.arguments);
                if q.queue_type == QueueType::Quorum {
                    arguments.insert(QUEUE_TYPE_ARG.into(), Value::from("quorum"));
                }
                QueueDef {
                    name: q.name.clone(),
                    vhost: None,
                    durable: q.durable,
                    auto_delete: q.auto_delete,
                    arguments,
                }
            })
            .collect();
        let bindings = self
            .bindings
            .iter()
            .filter_map(|b| match b {
                Binding::Queue {
                    queue,
                    exchange,
                    routing_key,
                    arguments,
                } => (!server_named.contains(&queue.as_str())).then(|| BindingDef {
                    source: exchange.clone(),
                    vhost: None,
                    destination: queue.clone(),
                    destination_type: "queue".into(),
                    routing_key: routing_key.clone(),
                    arguments: table_to_json(arguments),
                }),
                Binding::Exchange {
                    destination,
                    source,
                    routing_key,
                    arguments,
                } => Some(BindingDef {
                    source: source.clone(),
                    vhost: None,
                    destination: destination.clone(),
                    destination_type: "exchange".into(),
                    routing_key: routing_key.clone(),
                    arguments: table_to_json(arguments),
                }),
            })
            .collect();
        Definitions {
            exchanges,
            queues,
            bindings,
        }
    }

    /// The topology a definitions document describes (all of it: filter with
    /// [`Definitions::for_vhost`] first). Fails on a binding of an unknown destination
    /// type or a queue lepus cannot declare (a quorum queue that is not durable).
    pub fn from_definitions(defs: &Definitions) -> Result<Topology> {
        let mut topology = Topology::new();
        for e in &defs.exchanges {
            let mut exchange = Exchange::new(e.name.clone(), exchange_kind(&e.kind))
                .durable(e.durable)
                .auto_delete(e.auto_delete)
                .internal(e.internal);
            exchange.arguments = json_to_table(&e.arguments);
            topology = topology.exchange(exchange);
        }
        for q in &defs.queues {
            let mut arguments = q.arguments.clone();
            let mut queue = Queue::new(q.name.clone())
                .durable(q.durable)
                .auto_delete(q.auto_delete);
            if arguments.get(QUEUE_TYPE_ARG).and_then(Value::as_str) == Some("quorum") {
                arguments.remove(QUEUE_TYPE_ARG);
                queue = queue.queue_type(QueueType::Quorum);
            }
            queue.arguments = json_to_table(&arguments);
            queue.validate()?;
            topology = topology.queue(queue);
        }
        for b in &defs.bindings {
            let arguments = json_to_table(&b.arguments);
            let binding = match b.destination_type.as_str() {
                "queue" => Binding::Queue {
                    queue: b.destination.clone(),
                    exchange: b.source.clone(),
                    routing_key: b.routing_key.clone(),
                    arguments,
                },
                "exchange" => Binding::Exchange {
                    destination: b.destination.clone(),
                    source: b.source.clone(),
                    routing_key: b.routing_key.clone(),
                    arguments,
                },
                other => {
                    return Err(Error::new(
                        ErrorKind::Config,
                        format!(
                            "binding {} -> {}: unknown destination type '{other}'",
                            b.source, b.destination
                        ),
                    ));
                }
            };
            topology = topology.binding(binding);
        }
        Ok(topology)
    }
}

impl Serialize for Topology {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut defs = self.to_definitions();
        defs.sort();
        defs.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Topology {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let defs = Definitions::deserialize(d)?;
        Topology::from_definitions(&defs).map_err(serde::de::Error::custom)
    }
}

fn exchange_kind(kind: &str) -> ExchangeKind {
    match kind {
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "topic" => ExchangeKind::Topic,
        "headers" => ExchangeKind::Headers,
        other => ExchangeKind::Custom(other.to_owned()),
    }
}

/// A field table as a JSON object, the way the broker shows arguments.
pub fn table_to_json(table: &FieldTable) -> Map<String, Value> {
    table
        .into_iter()
        .map(|(k, v)| (k.as_str().to_owned(), value_to_json(v)))
        .collect()
}

/// A JSON object as a field table, the way the broker reads arguments.
pub fn json_to_table(map: &Map<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in map {
        table.insert(k.as_str().into(), json_to_value(v));
    }
    table
}

fn value_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::from(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        AMQPValue::Float(n) => Value::from(f64::from(*n)),
        AMQPValue::Double(n) => Value::from(*n),
        AMQPValue::DecimalValue(d) => {
            Value::from(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => Value::from(s.as_str()),
        AMQPValue::LongString(s) => Value::from(String::from_utf8_lossy(s.as_bytes()).as_ref()),
        AMQPValue::ByteArray(b) => Value::from(String::from_utf8_lossy(b.as_slice()).as_ref()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::FieldTable(t) => Value::Object(table_to_json(t)),
        AMQPValue::Void => Value::Null,
    }
}

fn json_to_value(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => long_string(s),
        Value::Array(a) => {
            AMQPValue::FieldArray(a.iter().map(json_to_value).collect::<Vec<_>>().into())
        }
        Value::Object(m) => AMQPValue::FieldTable(json_to_table(m)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;
    use crate::RetryPolicy;

    #[test]
    fn a_topology_survives_the_round_trip_through_json() {
        let topology = Topology::new()
            .exchange(Exchange::topic("shop").argument("alternate-exchange", long_string("ae")))
            .queue(Queue::new("orders").quorum().delivery_limit(5))
            .queue(Queue::new("audit").max_length(10).durable(false))
            .bind("orders", "shop", "order.*")
            .bind_exchange("audit-x", "shop", "#")
            .merge(
                RetryPolicy::default()
                    .delays([Duration::from_secs(1)])
                    .topology("orders"),
            );
        let text = serde_json::to_string(&topology).unwrap();
        let back: Topology = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back.to_definitions().to_json(),
            topology.to_definitions().to_json()
        );
        let defs = Definitions::from_json(&text).unwrap();
        let orders = defs.queues.iter().find(|q| q.name == "orders").unwrap();
        assert_eq!(
            orders.arguments.get("x-queue-type"),
            Some(&Value::from("quorum"))
        );
        assert_eq!(
            orders.arguments.get("x-delivery-limit"),
            Some(&Value::from(5))
        );
        let tier = defs
            .queues
            .iter()
            .find(|q| q.name == "orders.retry.1")
            .unwrap();
        assert_eq!(
            tier.arguments.get("x-message-ttl"),
            Some(&Value::from(1000))
        );
        assert!(
            defs.bindings
                .iter()
                .any(|b| b.destination_type == "exchange")
        );
    }

    #[test]
    fn a_broker_export_is_filtered_to_one_vhost_without_the_builtin_exchanges() {
        let text = r#"{"rabbit_version":"3.10.8","users":[{"name":"guest"}],
          "exchanges":[{"name":"amq.direct","vhost":"/","type":"direct","durable":true,"auto_delete":false,"internal":false,"arguments":{}},
                       {"name":"shop","vhost":"/","type":"topic","durable":true,"auto_delete":false,"internal":false,"arguments":{}},
                       {"name":"other","vhost":"v2","type":"topic","durable":true,"auto_delete":false,"internal":false,"arguments":{}}],
          "queues":[{"name":"q","vhost":"/","durable":true,"auto_delete":false,"arguments":{"x-queue-type":"classic"}}],
          "bindings":[]}"#;
        let defs = Definitions::from_json(text).unwrap().for_vhost("/");
        assert_eq!(defs.exchanges.len(), 1);
        assert_eq!(defs.exchanges[0].name, "shop");
        assert_eq!(defs.exchanges[0].vhost, None);
        let topology = Topology::from_definitions(&defs).unwrap();
        // An explicit classic type stays an argument, so the file comes back the same.
        assert_eq!(topology.to_definitions().to_json(), defs.to_json());
    }

    #[test]
    fn an_unknown_binding_destination_is_an_error() {
        let text = r#"{"bindings":[{"source":"a","destination":"b","destination_type":"topic","routing_key":"","arguments":{}}]}"#;
        let defs = Definitions::from_json(text).unwrap();
        assert!(Topology::from_definitions(&defs).is_err());
    }
}
