//! The endpoints of a client and one round of connection attempts over them: a fresh
//! random order each round, the host just lost tried last, and one error that answers
//! for the whole list when every endpoint failed.

use lepus_amqp::{Connection, ConnectionOptions};
use rand::seq::SliceRandom;

use crate::error::{Error, ErrorKind, Result};

/// One broker address to try, with how to name it in errors and states.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) options: ConnectionOptions,
    /// The URI with its password masked (or scheme, address and vhost).
    pub(crate) label: String,
}

/// Which endpoint connected: its label and `host:port`.
pub(super) struct Connected {
    pub(super) label: String,
    pub(super) address: String,
}

/// The endpoints in a fresh random order, except that `suspect` (the `host:port` whose
/// connection was just lost) comes last: a node that died or went silent usually still
/// is, and trying it first would cost a whole connection timeout (a blackholed host
/// answers nothing) before a healthy node is tried.
fn attempt_order<'a>(endpoints: &'a [Endpoint], suspect: Option<&str>) -> Vec<&'a Endpoint> {
    let mut order: Vec<&Endpoint> = endpoints.iter().collect();
    order.shuffle(&mut rand::rng());
    // Stable: the others keep their random order.
    order.sort_by_key(|e| suspect.is_some_and(|host| e.options.address() == host));
    order
}

/// Tries every endpoint once, in a fresh random order with `suspect` last, until one
/// connects. When all
/// fail, the error names each endpoint and how it failed; it is one that retrying cannot
/// fix only if that is true of every endpoint (a wrong password on one node may be a
/// node not yet updated; a TLS failure on one says nothing of the others).
pub(super) async fn connect_any(
    endpoints: &[Endpoint],
    suspect: Option<&str>,
) -> Result<(Connection, Connected)> {
    let order = attempt_order(endpoints, suspect);
    let mut failures: Vec<(&str, lepus_amqp::Error)> = Vec::with_capacity(order.len());
    for endpoint in order {
        match Connection::connect(endpoint.options.clone()).await {
            Ok(conn) => {
                return Ok((
                    conn,
                    Connected {
                        label: endpoint.label.clone(),
                        address: endpoint.options.address(),
                    },
                ));
            }
            Err(err) => {
                tracing::debug!(endpoint = %endpoint.label, error = %crate::error::report(&err), "endpoint unavailable");
                failures.push((&endpoint.label, err));
            }
        }
    }
    let text = failures
        .iter()
        .map(|(label, err)| format!("{label}: {}", crate::error::report(err)))
        .collect::<Vec<_>>()
        .join("; ");
    // The error underneath is a recoverable one if any endpoint's was, so the predicates
    // (`is_auth_failure`, `is_recoverable`) answer for the whole list.
    let chosen = failures
        .iter()
        .position(|(_, e)| e.is_recoverable())
        .unwrap_or(0);
    match failures.into_iter().nth(chosen) {
        // Several endpoints: the message lists each one's failure, so none comes again
        // as the source.
        Some((_, err)) if endpoints.len() > 1 => Err(Error::summarising(
            ErrorKind::Amqp,
            format!("every endpoint failed: {text}"),
            err,
        )),
        Some((label, err)) => Err(Error::with_amqp(ErrorKind::Amqp, label.to_string(), err)),
        None => Err(Error::new(ErrorKind::Config, "no endpoints configured")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_host_just_lost_is_tried_last() {
        let endpoints: Vec<Endpoint> = ["a", "b", "c"]
            .iter()
            .map(|h| Endpoint {
                options: ConnectionOptions::from_uri(&format!("amqp://{h}:5672/%2f")).unwrap(),
                label: (*h).to_owned(),
            })
            .collect();
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..200 {
            let order = attempt_order(&endpoints, Some("b:5672"));
            assert_eq!(order.len(), 3);
            assert_eq!(order.last().unwrap().label, "b");
            firsts.insert(order.first().unwrap().label.clone());
        }
        // The others are still shuffled.
        assert_eq!(firsts.len(), 2);
        let mut anywhere = std::collections::HashSet::new();
        for _ in 0..200 {
            anywhere.insert(
                attempt_order(&endpoints, None)
                    .last()
                    .unwrap()
                    .label
                    .clone(),
            );
        }
        assert_eq!(anywhere.len(), 3);
    }
}
