//! What a failed publish gives back: the cause and the message, untouched.

use crate::error::Error;
use crate::message::Message;

/// A failed publish, with the message handed back.
#[derive(Debug)]
pub struct PublishError {
    /// Why.
    pub error: Error,
    /// The message, untouched.
    pub message: Box<Message>,
}

impl PublishError {
    /// The message, to retry or store elsewhere.
    pub fn into_message(self) -> Message {
        *self.message
    }
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "publish to '{}' ({}) failed",
            self.message.exchange, self.message.routing_key
        )
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// The result of one publish.
pub type PublishResult = Result<(), PublishError>;
