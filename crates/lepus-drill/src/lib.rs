//! Fault drills for lepus: does a client lose or fail messages when the cluster under it
//! breaks the way real clusters break?
//!
//! Each scenario runs fixed-rate publish load (default 2,000 msg/s, every message with
//! its own id) through [`lepus::Publisher`] and a [`lepus::Consumer`] with an idempotency
//! store on the other side, against a three-zone [`lepus_testkit::Lab`]. After the
//! fault and some more load, a separate connection drains what is left and the
//! [checker](check) compares, per id, what the publisher was told with what the
//! consumer handled and what is still queued. The result is one [`Row`](check::Row) per
//! scenario and one SVG picture ([`chart`]).
//!
//! The `lepus-drill` binary (and `scripts/drill`) runs the [full set](scenario::catalog)
//! or any chosen scenarios; CI runs the [short set](scenario::short_set).

pub mod chart;
pub mod check;
pub mod env;
pub mod fault;
pub mod load;
pub mod record;
pub mod report;
pub mod scenario;
