//! Which publish made the broker close the channel.
//!
//! RabbitMQ handles a channel's publishes in order and closes the channel at the first
//! one it refuses (no such exchange, no write permission, a body over `max_message_size`).
//! Every publish after it was discarded unread, so it may go out again on a new channel
//! without a duplicate; the refused one must fail at once instead of going round again.
//! The `channel.close` does not say which publish it was, but its text names what was
//! wrong with it: the exchange, or the body's size. When the text names nothing we can
//! match, the unconfirmed messages are sent again one at a time (a probe), so the one
//! that closes the channel is known exactly.

use lepus_amqp::Error as AmqpError;

use crate::message::Message;

/// Reply codes of a channel close that a publish itself caused: access refused, no such
/// exchange, a precondition on the message (its size, its `user_id`, its expiration).
pub(super) fn is_message_fault(err: &AmqpError) -> bool {
    matches!(err.reply_code(), Some(403 | 404 | 406))
}

/// The broker's text says the body was over its `max_message_size`.
pub(super) fn is_size_refusal(err: &AmqpError) -> bool {
    err.reply_code() == Some(406) && err.message().contains("message size")
}

/// The position, among the unconfirmed messages in publish order, of the one the close
/// names; `None` when the text names nothing that tells them apart.
pub(super) fn find<'a>(
    err: &AmqpError,
    messages: impl Iterator<Item = &'a Message>,
) -> Option<usize> {
    let text = err.message();
    if let Some(exchange) = quoted_after(text, "exchange '") {
        // A topic permission refuses one routing key, not the whole exchange.
        return match quoted_after(text, "topic '") {
            Some(key) => position(messages, |m| m.exchange == exchange && m.routing_key == key),
            None => position(messages, |m| m.exchange == exchange),
        };
    }
    if is_size_refusal(err) {
        let size = number_after(text, "message size ")?;
        return position(messages, |m| m.body().len() == size);
    }
    None
}

fn position<'a>(
    mut messages: impl Iterator<Item = &'a Message>,
    matches: impl FnMut(&Message) -> bool,
) -> Option<usize> {
    messages.position(matches)
}

/// The text between `prefix` and the next `'` (RabbitMQ quotes names this way).
fn quoted_after<'t>(text: &'t str, prefix: &str) -> Option<&'t str> {
    let start = text.find(prefix)? + prefix.len();
    let rest = text.get(start..)?;
    rest.find('\'').and_then(|end| rest.get(..end))
}

fn number_after(text: &str, prefix: &str) -> Option<usize> {
    let start = text.find(prefix)? + prefix.len();
    let digits: String = text
        .get(start..)?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_from_rabbitmq_texts() {
        assert_eq!(
            quoted_after(
                "broker closed the channel: 404 NOT_FOUND - no exchange 'gone' in vhost '/'",
                "exchange '"
            ),
            Some("gone")
        );
        assert_eq!(
            quoted_after(
                "403 ACCESS_REFUSED - access to exchange 'x.y' in vhost 'v' refused for user 'u'",
                "exchange '"
            ),
            Some("x.y")
        );
        assert_eq!(
            number_after(
                "406 PRECONDITION_FAILED - message size 2048 is larger than configured max size 1024",
                "message size "
            ),
            Some(2048)
        );
        assert_eq!(quoted_after("no quote here", "exchange '"), None);
    }
}
