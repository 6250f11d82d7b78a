//! The checks themselves, in the order a connection meets them.

use std::net::SocketAddr;
use std::time::Instant;

use lepus::amqp::{
    BasicProperties, Connection, ConnectionOptions, FieldTable, PublishOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use tokio::net::TcpStream;

use super::tls::{self, TlsSettings, name_matches, now_secs};
use super::{Check, DoctorArgs, EXPIRY_WARN_DAYS, Endpoint, MAX_HEARTBEAT_SECS};
use crate::mgmt::percent_decode;
use crate::render::value_json;

/// The query value of `key` in `url`, percent-decoded.
fn query(url: &str, key: &str) -> Option<String> {
    let (_, q) = url.split_once('?')?;
    q.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

/// The user name of an AMQP URL (guest when it has none).
fn user(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => percent_decode(userinfo.split(':').next().unwrap_or("")),
        None => "guest".into(),
    }
}

/// All checks of one endpoint URL (TLS options already in its query).
pub(super) async fn endpoint(url: &str, args: &DoctorArgs) -> Endpoint {
    let mut e = Endpoint {
        url: lepus::amqp::redact_uri(url),
        reachable: false,
        checks: Vec::new(),
    };
    let opts = match ConnectionOptions::from_uri(url) {
        Ok(opts) => opts
            .connection_timeout(args.timeout)
            .operation_timeout(args.timeout),
        Err(err) => {
            e.checks
                .push(Check::fail("url", err.to_string(), "fix the URL"));
            return e;
        }
    };
    let (host, port) = (opts.host().to_owned(), opts.port());

    // DNS
    let lookup =
        tokio::time::timeout(args.timeout, tokio::net::lookup_host((host.as_str(), port))).await;
    let addrs: Vec<SocketAddr> = match lookup {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(err)) => {
            e.checks.push(Check::fail(
                "dns",
                format!("cannot resolve '{host}': {err}"),
                "check the host name and this machine's DNS",
            ));
            return e;
        }
        Err(_) => {
            e.checks.push(Check::fail(
                "dns",
                format!("resolving '{host}' took over {:?}", args.timeout),
                "check this machine's DNS servers",
            ));
            return e;
        }
    };
    let listed: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    e.checks.push(Check::pass(
        "dns",
        format!("{host} is {}", listed.join(", ")),
    ));

    // TCP
    let mut reached = None;
    let mut errors = Vec::new();
    for addr in &addrs {
        let started = Instant::now();
        match tokio::time::timeout(args.timeout, TcpStream::connect(addr)).await {
            Ok(Ok(_)) => {
                reached = Some((*addr, started.elapsed()));
                break;
            }
            Ok(Err(err)) => errors.push(format!("{addr}: {err}")),
            Err(_) => errors.push(format!("{addr}: no answer within {:?}", args.timeout)),
        }
    }
    let Some((addr, took)) = reached else {
        e.checks.push(Check::fail(
            "tcp",
            errors.join("; "),
            format!(
                "is the broker running and listening on port {port}? is a firewall in the way?"
            ),
        ));
        return e;
    };
    e.reachable = true;
    e.checks.push(Check::pass(
        "tcp",
        format!(
            "connected to {addr} in {:.1} ms",
            took.as_secs_f64() * 1000.0
        ),
    ));

    // TLS
    let is_tls = url.starts_with("amqps://");
    if is_tls {
        let settings = TlsSettings {
            ca: query(url, "cacertfile").map(Into::into),
            cert: query(url, "certfile").map(Into::into),
            key: query(url, "keyfile").map(Into::into),
            server_name: query(url, "server_name_indication").unwrap_or_else(|| host.clone()),
        };
        tls_checks(&mut e.checks, addr, &settings, args).await;
    } else {
        e.checks.push(Check::skip(
            "tls",
            "plain AMQP (amqp://): traffic and password are not encrypted",
        ));
    }

    // AMQP
    let external = query(url, "auth_mechanism").is_some_and(|m| m.eq_ignore_ascii_case("external"));
    let conn = match Connection::connect(opts.clone().connection_name("lepus doctor")).await {
        Ok(conn) => conn,
        Err(err) => {
            let (detail, fix) = if err.is_auth_failure() {
                (
                    format!("login refused: {}", err.message()),
                    if external {
                        "EXTERNAL: the client certificate's subject must be a user of the broker (rabbitmq_auth_mechanism_ssl)".to_owned()
                    } else {
                        format!("check the user name and password of user '{}'", user(url))
                    },
                )
            } else if err.is_access_refused() {
                (
                    format!("no access to vhost '{}': {}", opts.vhost(), err.message()),
                    format!(
                        "rabbitmqctl set_permissions -p '{}' '{}' '.*' '.*' '.*' (or narrower patterns)",
                        opts.vhost(),
                        user(url)
                    ),
                )
            } else if is_tls {
                (
                    lepus::error::report(&err).to_string(),
                    "see the TLS checks above".to_owned(),
                )
            } else {
                (
                    lepus::error::report(&err).to_string(),
                    "see the reason; the broker's log says more".to_owned(),
                )
            };
            e.checks.push(Check::fail("login", detail, fix));
            return e;
        }
    };
    let how = if external {
        "EXTERNAL (the client certificate)".to_owned()
    } else {
        format!("PLAIN as '{}'", user(url))
    };
    e.checks.push(Check::pass(
        "login",
        format!("{how}, vhost '{}'", opts.vhost()),
    ));
    broker_checks(&mut e.checks, &conn);
    if args.no_exercise {
        e.checks
            .push(Check::skip("permissions", "--no-exercise: not exercised"));
    } else {
        e.checks.push(exercise(&conn, args).await);
    }
    e.checks.push(match conn.blocked().borrow().clone() {
        Some(reason) => Check::fail(
            "alarms",
            format!("the broker blocks publishing: {reason}"),
            "a memory or disk alarm is on: free memory or disk on the broker, or raise its limits",
        ),
        None => Check::pass("alarms", "publishing not blocked (no memory or disk alarm)"),
    });
    let _ = tokio::time::timeout(args.timeout, conn.close()).await;
    e
}

async fn tls_checks(
    checks: &mut Vec<Check>,
    addr: SocketAddr,
    settings: &TlsSettings,
    args: &DoctorArgs,
) {
    let probe = match tls::probe(addr, settings, args.timeout).await {
        Ok(probe) => probe,
        Err(err) => {
            checks.push(Check::fail(
                "tls",
                format!("{err:#}"),
                "is this port a TLS listener (amqps, usually 5671)? are the certificate files readable?",
            ));
            return;
        }
    };
    checks.push(Check::pass(
        "tls",
        format!("{}, {}", probe.version, probe.cipher),
    ));
    let Some(leaf) = probe.chain.first() else {
        checks.push(Check::fail(
            "tls.chain",
            "the server sent no certificate",
            "configure the broker's ssl_options.certfile",
        ));
        return;
    };
    match &probe.untrusted {
        None => checks.push(Check::pass(
            "tls.chain",
            format!("trusted: {} issued by {}", leaf.subject, leaf.issuer),
        )),
        Some(reason) => checks.push(Check::fail(
            "tls.chain",
            format!("not trusted ({reason}): {} issued by {}", leaf.subject, leaf.issuer),
            match &settings.ca {
                Some(ca) => format!("{} does not hold the CA that issued the broker's certificate: give --tls-ca with '{}'", ca.display(), leaf.issuer),
                None => format!("the system's roots do not hold '{}': give --tls-ca with that CA", leaf.issuer),
            },
        )),
    }
    if name_matches(&leaf.names, &settings.server_name) {
        checks.push(Check::pass(
            "tls.hostname",
            format!(
                "'{}' is one of the certificate's names",
                settings.server_name
            ),
        ));
    } else {
        checks.push(Check::fail(
            "tls.hostname",
            format!("the certificate is for {}, not '{}'", if leaf.names.is_empty() { "no name (no subjectAltName)".to_owned() } else { leaf.names.join(", ") }, settings.server_name),
            "connect with one of the certificate's names (or --tls-server-name), or reissue the certificate with this name",
        ));
    }
    checks.push(expiry("tls.expiry", "the broker's certificate", leaf));
    if probe.client_cert_configured {
        let cert = probe.client_cert.as_ref();
        let subject = cert.map_or_else(|| "?".to_owned(), |c| c.subject.clone());
        match &probe.rejected_after_handshake {
            Some(reason) => checks.push(Check::fail(
                "tls.client-cert",
                format!("the broker refused our certificate {subject}: {reason}"),
                "the broker must trust the CA that issued the client certificate (ssl_options.cacertfile)",
            )),
            None if !probe.client_cert_requested => checks.push(Check::warn(
                "tls.client-cert",
                format!("configured ({subject}) but the broker did not ask for it"),
                "set ssl_options.verify = verify_peer on the broker if it should check clients",
            )),
            None => {
                checks.push(Check::pass("tls.client-cert", format!("{subject} accepted")));
                if let Some(cert) = cert {
                    checks.push(expiry("tls.client-expiry", "our client certificate", cert));
                }
            }
        }
    } else if let Some(reason) = &probe.rejected_after_handshake {
        checks.push(Check::fail(
            "tls.client-cert",
            format!("the broker closed the connection after the handshake: {reason}"),
            if probe.client_cert_requested {
                "the broker wants a client certificate: give --tls-cert and --tls-key"
            } else {
                "see the broker's log"
            },
        ));
    } else {
        checks.push(Check::skip("tls.client-cert", "none configured"));
    }
}

fn expiry(name: &'static str, what: &str, cert: &tls::CertInfo) -> Check {
    let now = now_secs();
    let days = (cert.not_after - now).div_euclid(86_400);
    let until = crate::dlq::record::rfc3339_ms(cert.not_after * 1000);
    if cert.not_before > now {
        return Check::fail(
            name,
            format!(
                "{what} is not valid before {}",
                crate::dlq::record::rfc3339_ms(cert.not_before * 1000)
            ),
            "check the clocks of this machine and of the CA",
        );
    }
    if cert.not_after <= now {
        return Check::fail(
            name,
            format!("{what} expired on {until}"),
            "renew the certificate now",
        );
    }
    if days < EXPIRY_WARN_DAYS {
        return Check::warn(
            name,
            format!("{what} expires in {days} days ({until})"),
            format!("renew it before then (warned under {EXPIRY_WARN_DAYS} days)"),
        );
    }
    Check::pass(
        name,
        format!("{what} is valid for {days} more days (until {until})"),
    )
}

fn text(props: &FieldTable, key: &str) -> Option<String> {
    props
        .inner()
        .get(key)
        .map(value_json)
        .and_then(|v| v.as_str().map(str::to_owned))
}

fn broker_checks(checks: &mut Vec<Check>, conn: &Connection) {
    let props = conn.server_properties();
    let product = text(props, "product").unwrap_or_else(|| "?".into());
    let version = text(props, "version").unwrap_or_else(|| "?".into());
    let cluster = text(props, "cluster_name").unwrap_or_else(|| "?".into());
    checks.push(Check::pass(
        "broker",
        format!("{product} {version}, cluster '{cluster}'"),
    ));
    let tuned = conn.negotiated();
    checks.push(match tuned.heartbeat {
        0 => Check::warn(
            "heartbeat",
            "0: heartbeats are off",
            "a dead broker or link is noticed only by TCP (minutes): set heartbeat=10..60 in the URL, or the broker's heartbeat",
        ),
        h if h > MAX_HEARTBEAT_SECS => Check::warn(
            "heartbeat",
            format!("{h} s: a dead peer is noticed only after {} s", u32::from(h) * 2),
            "propose a shorter one (?heartbeat=30 in the URL) or lower the broker's heartbeat",
        ),
        h => Check::pass("heartbeat", format!("{h} s")),
    });
    checks.push(Check::pass(
        "frame-max",
        format!(
            "{} bytes, {} channels at most",
            tuned.frame_max, tuned.channel_max
        ),
    ));
}

/// Declares a temporary queue, publishes to it with a confirm, takes the message back
/// and deletes the queue: the permissions a service needs, used for real.
async fn exercise(conn: &Connection, args: &DoctorArgs) -> Check {
    let queue = format!("lepus-doctor-{:08x}", rand::random::<u32>());
    let steps = async {
        let step = |what: &'static str| {
            move |e: lepus::amqp::Error| (what, lepus::error::report(&e).to_string())
        };
        let ch = conn.open_channel().await.map_err(step("open a channel"))?;
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        ch.queue_declare(&queue, options, FieldTable::default())
            .await
            .map_err(step("declare a queue (configure)"))?;
        ch.confirm_select()
            .await
            .map_err(step("turn on confirms"))?;
        let confirm = ch
            .basic_publish(
                "",
                &queue,
                PublishOptions::default(),
                &BasicProperties::default(),
                b"lepus doctor",
            )
            .await
            .map_err(step("publish (write)"))?;
        let confirmation = confirm
            .wait(args.timeout)
            .await
            .map_err(step("get a confirm"))?;
        if !confirmation.is_ack() {
            return Err(("get a confirm", "the broker nacked the message".to_owned()));
        }
        let got = ch.basic_get(&queue).await.map_err(step("consume (read)"))?;
        match got {
            Some(m) => m.delivery.ack().map_err(step("ack"))?,
            None => {
                return Err((
                    "consume (read)",
                    "the confirmed message was not in the queue".to_owned(),
                ));
            }
        }
        ch.queue_delete(&queue, QueueDeleteOptions::default())
            .await
            .map_err(step("delete the queue (configure)"))?;
        let _ = ch.close().await;
        Ok::<(), (&'static str, String)>(())
    };
    match tokio::time::timeout(args.timeout * 2, steps).await {
        Ok(Ok(())) => Check::pass(
            "permissions",
            "declared a queue, published with a confirm, consumed, deleted",
        ),
        Ok(Err((what, err))) => Check::fail(
            "permissions",
            format!("could not {what}: {err}"),
            "grant the user configure, write and read permissions that match the service's exchanges and queues (rabbitmqctl set_permissions)",
        ),
        Err(_) => Check::fail(
            "permissions",
            format!("the exercise took over {:?}", args.timeout * 2),
            "the broker is slow or blocked: see the alarms check",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(from_days: i64, to_days: i64) -> tls::CertInfo {
        let now = now_secs();
        tls::CertInfo {
            subject: "CN=x".into(),
            issuer: "CN=ca".into(),
            names: vec![],
            not_before: now + from_days * 86_400,
            not_after: now + to_days * 86_400,
        }
    }

    #[test]
    fn expiry_warns_under_thirty_days_and_fails_when_expired() {
        let c = expiry("tls.expiry", "it", &cert(-10, 400));
        assert_eq!(c.status, super::super::Status::Pass, "{c:?}");
        let c = expiry("tls.expiry", "it", &cert(-10, 10));
        assert_eq!(c.status, super::super::Status::Warn, "{c:?}");
        assert!(
            c.detail.contains("expires in 9 days") || c.detail.contains("expires in 10 days"),
            "{c:?}"
        );
        let c = expiry("tls.expiry", "it", &cert(-10, -1));
        assert_eq!(c.status, super::super::Status::Fail, "{c:?}");
        assert!(c.detail.contains("expired on"), "{c:?}");
        let c = expiry("tls.expiry", "it", &cert(2, 400));
        assert_eq!(c.status, super::super::Status::Fail, "{c:?}");
    }

    #[test]
    fn urls_give_user_and_query_values() {
        let url = "amqps://app:s3cret@h:5671/%2f?cacertfile=/a%20b.pem&auth_mechanism=external";
        assert_eq!(user(url), "app");
        assert_eq!(user("amqp://h/"), "guest");
        assert_eq!(query(url, "cacertfile").as_deref(), Some("/a b.pem"));
        assert_eq!(query(url, "certfile"), None);
    }
}
