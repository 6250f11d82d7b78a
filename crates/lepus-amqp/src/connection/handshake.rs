//! The opening handshake, before the reader and writer tasks own the socket.
//!
//! It runs as straight-line code on the socket (no tasks yet): every step waits for one
//! expected method, so a broker that answers out of order or closes the connection is
//! reported at the step where it happened, with the broker's reason.

use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Negotiated;
use super::buffers::READ_START;
use super::transport::{self, ReadHalf, WriteHalf};
use crate::codec::{self, Frame};
use crate::error::{Error, ErrorKind, Result};
use crate::options::{AuthMechanism, ConnectionOptions};

/// Frames the broker may send before `tune` settles `frame_max`.
const HANDSHAKE_FRAME_MAX: usize = 128 * 1024;

/// A connection past `connection.open-ok`: the socket halves, with whatever the reader
/// already buffered, and what was settled.
pub(super) struct Opened {
    pub(super) rd: ReadHalf,
    pub(super) wr: WriteHalf,
    pub(super) buf: BytesMut,
    pub(super) negotiated: Negotiated,
    pub(super) server_properties: FieldTable,
    pub(super) opts: ConnectionOptions,
}

/// Runs the opening exchange on a fresh socket. The caller bounds the time.
///
/// The order is the protocol's: protocol header, `start` / `start-ok` (the broker offers
/// SASL mechanisms, we answer with one and the credentials), `tune` / `tune-ok` (each
/// limit is the smaller non-zero of the two sides), then `open` / `open-ok` for the vhost.
/// Only a few things can go wrong on the way, but each needs its own error: a refused
/// login, a TLS alert that arrives late, a socket that simply ends.
pub(super) async fn handshake(opts: ConnectionOptions) -> Result<Opened> {
    let (mut rd, mut wr) = transport::connect(&opts).await?;
    let mut buf = BytesMut::with_capacity(READ_START);
    let sent = async {
        wr.write_all(codec::PROTOCOL_HEADER).await?;
        wr.flush().await
    }
    .await;
    if let Err(e) = sent {
        let err = transport::tls_io_error(&opts, "sending the protocol header", e);
        return Err(refusal_alert(&opts, &mut rd, &mut buf).await.unwrap_or(err));
    }

    // The first read: on TLS 1.3 it is where a server's refusal of our certificate shows.
    let first = read_method(&mut rd, &mut buf, false)
        .await
        .map_err(|e| first_read_error(&opts, e))?;
    let start = match first {
        AMQPClass::Connection(connection::AMQPMethod::Start(start)) => start,
        other => return Err(unexpected("connection.start", &other)),
    };
    let mechanism = match opts.auth {
        AuthMechanism::Plain => "PLAIN",
        AuthMechanism::External => "EXTERNAL",
    };
    let offered = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
    if !offered.split_whitespace().any(|m| m == mechanism) {
        return Err(Error::new(
            ErrorKind::AuthFailure,
            format!("the broker does not offer {mechanism} login (it offers: {offered})"),
        ));
    }
    let response = match opts.auth {
        AuthMechanism::Plain => {
            LongString::from(format!("\0{}\0{}", opts.username, opts.password.0))
        }
        AuthMechanism::External => LongString::from(Vec::new()),
    };
    let start_ok = AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
        client_properties: client_properties(&opts),
        mechanism: ShortString::from(mechanism),
        response,
        locale: ShortString::from("en_US"),
    }));
    send(&mut wr, &start_ok).await?;

    let tune = match read_method(&mut rd, &mut buf, true).await? {
        AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) => tune,
        AMQPClass::Connection(connection::AMQPMethod::Secure(_)) => {
            return Err(Error::new(
                ErrorKind::AuthFailure,
                "the broker asked for a SASL challenge, which PLAIN and EXTERNAL do not use",
            ));
        }
        other => return Err(unexpected("connection.tune", &other)),
    };
    let negotiated = Negotiated {
        frame_max: smaller_nonzero(opts.frame_max, tune.frame_max).max(4096),
        channel_max: smaller_nonzero(opts.channel_max, tune.channel_max),
        heartbeat: smaller_nonzero(opts.heartbeat, tune.heartbeat),
    };
    let tune_ok = AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
        channel_max: negotiated.channel_max,
        frame_max: negotiated.frame_max,
        heartbeat: negotiated.heartbeat,
    }));
    send(&mut wr, &tune_ok).await?;
    let open = AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
        virtual_host: crate::channel::name("vhost", &opts.vhost)?,
    }));
    send(&mut wr, &open).await?;
    match read_method(&mut rd, &mut buf, false).await? {
        AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => {}
        other => return Err(unexpected("connection.open-ok", &other)),
    }

    Ok(Opened {
        rd,
        wr,
        buf,
        negotiated,
        server_properties: start.server_properties,
        opts,
    })
}

fn smaller_nonzero<T: Ord + Default + Copy>(ours: T, theirs: T) -> T {
    let zero = T::default();
    match (ours == zero, theirs == zero) {
        (true, _) => theirs,
        (_, true) => ours,
        _ => ours.min(theirs),
    }
}

fn client_properties(opts: &ConnectionOptions) -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "consumer_cancel_notify",
        "connection.blocked",
        "basic.nack",
        "authentication_failure_close",
        "exchange_exchange_bindings",
    ] {
        caps.insert(ShortString::from(cap), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    props.insert("product".into(), text("lepus"));
    props.insert("version".into(), text(env!("CARGO_PKG_VERSION")));
    props.insert("platform".into(), text("Rust"));
    props.insert(
        "information".into(),
        text("lepus-amqp, a tokio-native AMQP 0-9-1 engine"),
    );
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    if let Some(name) = &opts.name {
        props.insert("connection_name".into(), text(name));
    }
    props
}

/// After a failed write on a fresh TLS connection: the alert a server that refused our
/// certificate sent before it reset the connection, if it is there to read (TLS 1.3
/// ends the client's handshake before the server has judged the client certificate).
async fn refusal_alert(
    opts: &ConnectionOptions,
    rd: &mut ReadHalf,
    buf: &mut BytesMut,
) -> Option<Error> {
    opts.tls.as_ref()?;
    let read = tokio::time::timeout(Duration::from_secs(1), read_method(rd, buf, false)).await;
    match read {
        Ok(Err(err)) => Some(first_read_error(opts, err)).filter(|e| e.kind() == ErrorKind::Tls),
        _ => None,
    }
}

/// A failed first read on a TLS connection, typed when rustls says why (see
/// [`transport::tls_io_error`]).
fn first_read_error(opts: &ConnectionOptions, err: Error) -> Error {
    if opts.tls.is_none() || err.kind() != ErrorKind::Io {
        return err;
    }
    let rustls_err = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_err {
        Some(rustls_err) => transport::tls_error(opts, "reading connection.start", rustls_err),
        None => err,
    }
}

fn unexpected(wanted: &str, got: &AMQPClass) -> Error {
    Error::protocol(format!(
        "expected {wanted} during the handshake, got {}",
        crate::channel::method_name(got)
    ))
}

async fn send(wr: &mut WriteHalf, method: &AMQPClass) -> Result<()> {
    let mut out = Vec::with_capacity(512);
    codec::put_method(&mut out, 0, method)?;
    wr.write_all(&out)
        .await
        .map_err(|e| Error::io("handshake write failed", e))?;
    wr.flush()
        .await
        .map_err(|e| Error::io("handshake write failed", e))
}

/// Reads the next method on channel 0 during the handshake. A `connection.close` becomes
/// the error it carries (`during_login` turns 403 into an authentication failure).
async fn read_method(
    rd: &mut ReadHalf,
    buf: &mut BytesMut,
    during_login: bool,
) -> Result<AMQPClass> {
    loop {
        while let Some(frame) = codec::decode_frame(buf, HANDSHAKE_FRAME_MAX)? {
            match frame {
                Frame::Heartbeat => continue,
                Frame::Method(0, method) => {
                    if let AMQPClass::Connection(connection::AMQPMethod::Close(close)) = *method {
                        return Err(Error::from_reply(
                            close.reply_code,
                            close.reply_text.as_str(),
                            false,
                            during_login,
                        ));
                    }
                    return Ok(*method);
                }
                other => {
                    return Err(Error::protocol(format!(
                        "unexpected {} frame during the handshake",
                        other.name()
                    )));
                }
            }
        }
        buf.reserve(READ_START);
        let n = rd
            .read_buf(buf)
            .await
            .map_err(|e| Error::io("handshake read failed", e))?;
        if n == 0 {
            // We announce `authentication_failure_close`, so a broker that refuses the
            // credentials says so with connection.close 403 (handled above). A socket that
            // simply ends, even right after start-ok, is a network or broker failure
            // (a node shutting down, a proxy cutting in): worth another attempt.
            let phase = if during_login {
                " (after login, before tune: no connection.close came, so this is not a refused login)"
            } else {
                ""
            };
            return Err(Error::new(
                ErrorKind::Io,
                format!("the broker closed the socket during the handshake{phase}"),
            ));
        }
    }
}
