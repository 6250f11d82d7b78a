//! Where `replay` and `move` send one dead-lettered message, and the copy they send:
//! replay goes to the message's original queue through the default exchange unless told
//! otherwise (see `transfer.rs` for why), `move` to an archive queue or file unchanged.

use std::path::PathBuf;

use lepus::Message;
use lepus::amqp::Delivery;
use lepus::failure::{self, FailureRecord};

use super::record::{DeadLetter, one_line};

/// Where selected messages go.
pub(super) enum Dest {
    /// Republish for another round of processing.
    Replay {
        to_queue: Option<String>,
        via_exchange: bool,
        /// `--queue`, for messages without an original-queue header.
        fallback: Option<String>,
    },
    /// An archive queue, unchanged.
    Queue(String),
    /// A JSON-lines file.
    File(PathBuf),
}

impl Dest {
    pub(super) fn verb(&self) -> &'static str {
        match self {
            Dest::Replay { .. } => "replayed",
            Dest::Queue(_) | Dest::File(_) => "moved",
        }
    }

    /// The one queue every copy goes to, if there is one.
    pub(super) fn fixed_queue(&self) -> Option<&str> {
        match self {
            Dest::Replay { to_queue, .. } => to_queue.as_deref(),
            Dest::Queue(queue) => Some(queue),
            Dest::File(_) => None,
        }
    }
}

/// Where one message goes: exchange and routing key, and how to say it.
pub(super) struct Route {
    pub(super) exchange: String,
    pub(super) routing_key: String,
    pub(super) to: String,
}

impl Route {
    fn queue(queue: &str) -> Self {
        Self {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            to: format!("queue '{}'", one_line(queue)),
        }
    }
}

pub(super) fn route(dest: &Dest, dl: &DeadLetter) -> Result<Route, String> {
    match dest {
        Dest::Queue(queue)
        | Dest::Replay {
            to_queue: Some(queue),
            ..
        } => Ok(Route::queue(queue)),
        Dest::Replay {
            via_exchange: true, ..
        } => match (
            &dl.failure.original_exchange,
            &dl.failure.original_routing_key,
        ) {
            (Some(exchange), Some(key)) => Ok(Route {
                exchange: exchange.clone(),
                routing_key: key.clone(),
                to: format!(
                    "exchange '{}' with routing key '{}'",
                    one_line(exchange),
                    one_line(key)
                ),
            }),
            _ => Err(format!(
                "it has no {} or {} header",
                failure::ORIGINAL_EXCHANGE_HEADER,
                failure::ORIGINAL_ROUTING_KEY_HEADER
            )),
        },
        Dest::Replay { fallback, .. } => {
            match dl.failure.original_queue.as_ref().or(fallback.as_ref()) {
                Some(queue) => Ok(Route::queue(queue)),
                None => Err(format!(
                    "it has no {} header (give --queue or --to-queue)",
                    failure::ORIGINAL_QUEUE_HEADER
                )),
            }
        }
        Dest::File(path) => Ok(Route {
            exchange: String::new(),
            routing_key: String::new(),
            to: format!("file {}", path.display()),
        }),
    }
}

/// The replayed copy: the same body and properties (so the same `message_id`), without
/// the attempt counters (the consumer starts counting afresh), stamped as replayed.
pub(super) fn replay_copy(delivery: &Delivery, route: &Route, now_ms: i64) -> Message {
    let mut headers = delivery.properties().headers().clone().unwrap_or_default();
    FailureRecord::stamp_replay(&mut headers, now_ms);
    let mut copy = archive_copy(delivery, route);
    *copy.properties_mut() = std::mem::take(copy.properties_mut()).with_headers(headers);
    copy
}

/// An archived copy: everything as it was.
pub(super) fn archive_copy(delivery: &Delivery, route: &Route) -> Message {
    let mut copy = Message::new(
        route.exchange.as_str(),
        route.routing_key.as_str(),
        delivery.body().clone(),
    )
    .mandatory(true);
    *copy.properties_mut() = delivery.properties().clone();
    copy
}
#[cfg(test)]
mod tests {
    use super::*;

    fn dead_letter() -> DeadLetter {
        DeadLetter {
            message_id: Some("m-1".into()),
            failure: lepus::FailureRecord {
                original_exchange: Some("shop".into()),
                original_routing_key: Some("order.created".into()),
                original_queue: Some("orders".into()),
                ..lepus::FailureRecord::default()
            },
            ..DeadLetter::default()
        }
    }

    fn replay_to(to_queue: Option<&str>, via_exchange: bool, fallback: Option<&str>) -> Dest {
        Dest::Replay {
            to_queue: to_queue.map(str::to_owned),
            via_exchange,
            fallback: fallback.map(str::to_owned),
        }
    }

    #[test]
    fn replay_goes_to_the_original_queue_by_default() {
        let r = route(&replay_to(None, false, None), &dead_letter()).unwrap();
        assert_eq!(
            (r.exchange.as_str(), r.routing_key.as_str()),
            ("", "orders")
        );
        let r = route(&replay_to(None, true, None), &dead_letter()).unwrap();
        assert_eq!(
            (r.exchange.as_str(), r.routing_key.as_str()),
            ("shop", "order.created")
        );
        let r = route(&replay_to(Some("other"), false, None), &dead_letter()).unwrap();
        assert_eq!((r.exchange.as_str(), r.routing_key.as_str()), ("", "other"));
    }

    #[test]
    fn a_message_without_origin_needs_a_queue() {
        let bare = DeadLetter::default();
        assert!(route(&replay_to(None, false, None), &bare).is_err());
        assert!(route(&replay_to(None, true, None), &bare).is_err());
        let r = route(&replay_to(None, false, Some("orders")), &bare).unwrap();
        assert_eq!(r.routing_key, "orders");
    }
}
