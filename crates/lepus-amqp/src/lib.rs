//! lepus-amqp: one AMQP 0-9-1 connection over TCP or TLS and its channels.
