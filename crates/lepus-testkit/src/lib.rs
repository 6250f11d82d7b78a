//! Real RabbitMQ nodes for tests.
