//! The kind of queue a run declares: classic (the default) or quorum (replicated, for a
//! cluster given with `--amqp-url` repeated).

use lepus_amqp::{AMQPValue, FieldTable};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueueType {
    Classic,
    Quorum,
}

impl QueueType {
    /// The `queue.declare` arguments: none for a classic queue, `x-queue-type` for a
    /// quorum queue.
    pub fn arguments(self) -> FieldTable {
        let mut arguments = FieldTable::default();
        if self == QueueType::Quorum {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        arguments
    }

    pub fn name(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_quorum_queues_carry_an_argument() {
        assert!(QueueType::Classic.arguments().inner().is_empty());
        assert_eq!(QueueType::Quorum.arguments().inner().len(), 1);
    }
}
