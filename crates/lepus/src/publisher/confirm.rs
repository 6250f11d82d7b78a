//! The future a caller awaits for one message's confirm.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::shared::Answer;
use super::{PublishError, PublishResult};
use crate::error::{Error, ErrorKind};
use crate::message::Message;

/// Resolves when the broker confirms one message; on failure the message comes back.
#[must_use = "a confirm does nothing unless awaited"]
pub struct Confirm {
    rx: oneshot::Receiver<Answer>,
    message_id: IdText,
}

impl Confirm {
    pub(super) fn new(rx: oneshot::Receiver<Answer>, message_id: &str) -> Confirm {
        Confirm {
            rx,
            message_id: IdText::new(message_id),
        }
    }

    /// The message's id (the one given, or the UUIDv7 the publisher assigned).
    pub fn message_id(&self) -> &str {
        self.message_id.as_str()
    }
}

impl std::future::Future for Confirm {
    type Output = PublishResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PublishResult> {
        // The publisher task always answers (it fails what it cannot publish before its
        // deadline); a dropped sender means the task is gone, which only a panic in it
        // could cause, and then the message is lost to us: report it plainly.
        //
        // A confirmed message comes back to be freed here, on the caller's thread, which
        // allocated it.
        Pin::new(&mut self.rx).poll(cx).map(|r| match r {
            Ok(answer) => answer.map(drop),
            Err(_) => Err(PublishError {
                error: Error::new(ErrorKind::Closed, "the publisher stopped"),
                message: Box::new(Message::new("", "", "")),
            }),
        })
    }
}

/// The bytes of a hyphenated UUID, the id the publisher assigns.
const INLINE_ID: usize = 36;

/// A copy of a message id, kept without an allocation when it is no longer than a UUID
/// (every id the publisher assigns): one less allocation, and free on another thread,
/// per message.
enum IdText {
    Inline { bytes: [u8; INLINE_ID], len: u8 },
    Heap(String),
}

impl IdText {
    fn new(id: &str) -> IdText {
        let mut bytes = [0u8; INLINE_ID];
        match (bytes.get_mut(..id.len()), u8::try_from(id.len())) {
            (Some(head), Ok(len)) => {
                head.copy_from_slice(id.as_bytes());
                IdText::Inline { bytes, len }
            }
            _ => IdText::Heap(id.to_owned()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Copied whole from a `&str`, so always valid UTF-8.
            IdText::Inline { bytes, len } => bytes
                .get(..usize::from(*len))
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or_default(),
            IdText::Heap(id) => id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IdText;

    #[test]
    fn a_message_id_reads_back_whatever_its_length() {
        let uuid = "0192f0c1-7d3a-7b8e-9a4f-2c1d5e6f7a8b";
        let long = "é".repeat(100);
        for id in ["", "mine", uuid, &format!("{uuid}x"), &long] {
            assert_eq!(IdText::new(id).as_str(), id);
        }
        assert!(matches!(IdText::new(uuid), IdText::Inline { .. }));
        assert!(matches!(IdText::new(&long), IdText::Heap(_)));
    }
}
