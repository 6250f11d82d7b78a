//! A deliberately tiny AMQP 0-9-1 client for the test kit's own tests: just enough frames
//! to log in, declare a queue, publish with a confirm and get a message back. The real
//! client is lepus-amqp; this one exists so the test kit is tested without depending on it.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub(crate) const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;

/// How to log in.
pub(crate) enum Login {
    Plain(&'static str, &'static str),
    External,
}

pub(crate) struct Amqp<S: Read + Write> {
    stream: S,
}

/// A method frame's class id, method id and arguments.
pub(crate) struct Method {
    pub class: u16,
    pub method: u16,
    pub args: Vec<u8>,
}

impl Method {
    pub(crate) fn is(&self, class: u16, method: u16) -> bool {
        self.class == class && self.method == method
    }
}

pub(crate) fn connect_tcp(port: u16) -> Amqp<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut amqp = Amqp { stream };
    amqp.handshake(Login::Plain("guest", "guest"));
    amqp
}

fn shortstr(out: &mut Vec<u8>, s: &str) {
    out.push(u8::try_from(s.len()).unwrap());
    out.extend_from_slice(s.as_bytes());
}

fn longstr(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).unwrap().to_be_bytes());
    out.extend_from_slice(b);
}

impl<S: Read + Write> Amqp<S> {
    pub(crate) fn new(stream: S) -> Self {
        Amqp { stream }
    }

    pub(crate) fn stream(&mut self) -> &mut S {
        &mut self.stream
    }

    fn write_frame(&mut self, kind: u8, channel: u16, payload: &[u8]) {
        let mut frame = vec![kind];
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(FRAME_END);
        self.stream.write_all(&frame).unwrap();
        self.stream.flush().unwrap();
    }

    fn send_method(&mut self, channel: u16, class: u16, method: u16, args: &[u8]) {
        let mut payload = class.to_be_bytes().to_vec();
        payload.extend_from_slice(&method.to_be_bytes());
        payload.extend_from_slice(args);
        self.write_frame(FRAME_METHOD, channel, &payload);
    }

    /// The next frame other than a heartbeat: (type, channel, payload).
    pub(crate) fn read_frame(&mut self) -> std::io::Result<(u8, u16, Vec<u8>)> {
        loop {
            let mut head = [0u8; 7];
            self.stream.read_exact(&mut head)?;
            let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
            let mut payload = vec![0u8; size + 1];
            self.stream.read_exact(&mut payload)?;
            assert_eq!(payload.pop(), Some(FRAME_END), "frame end");
            if head[0] != FRAME_HEARTBEAT {
                return Ok((head[0], u16::from_be_bytes([head[1], head[2]]), payload));
            }
        }
    }

    pub(crate) fn read_method(&mut self) -> std::io::Result<Method> {
        let (kind, _, payload) = self.read_frame()?;
        assert_eq!(kind, FRAME_METHOD, "expected a method frame");
        Ok(Method {
            class: u16::from_be_bytes([payload[0], payload[1]]),
            method: u16::from_be_bytes([payload[2], payload[3]]),
            args: payload[4..].to_vec(),
        })
    }

    fn expect(&mut self, class: u16, method: u16) -> Method {
        let m = self.read_method().unwrap();
        assert!(
            m.is(class, method),
            "expected {class}.{method}, got {}.{} {:?}",
            m.class,
            m.method,
            String::from_utf8_lossy(&m.args)
        );
        m
    }

    /// Protocol header, start-ok, tune-ok, open; then channel 1 is opened.
    pub(crate) fn handshake(&mut self, login: Login) {
        self.stream.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
        self.expect(10, 10); // connection.start
        let mut args = 0u32.to_be_bytes().to_vec(); // client properties: empty table
        match login {
            Login::Plain(user, pass) => {
                shortstr(&mut args, "PLAIN");
                longstr(&mut args, format!("\0{user}\0{pass}").as_bytes());
            }
            Login::External => {
                shortstr(&mut args, "EXTERNAL");
                longstr(&mut args, b"");
            }
        }
        shortstr(&mut args, "en_US");
        self.send_method(0, 10, 11, &args);
        let tune = self.expect(10, 30);
        let mut tune_ok = tune.args[..6].to_vec(); // channel-max, frame-max as offered
        tune_ok.extend_from_slice(&0u16.to_be_bytes()); // no heartbeats
        self.send_method(0, 10, 31, &tune_ok);
        let mut open = Vec::new();
        shortstr(&mut open, "/");
        shortstr(&mut open, "");
        open.push(0);
        self.send_method(0, 10, 40, &open);
        self.expect(10, 41);
        let mut channel_open = Vec::new();
        shortstr(&mut channel_open, "");
        self.send_method(1, 20, 10, &channel_open);
        self.expect(20, 11);
    }

    pub(crate) fn declare_queue(&mut self, name: &str, durable: bool) {
        let mut args = 0u16.to_be_bytes().to_vec();
        shortstr(&mut args, name);
        args.push(if durable { 0b10 } else { 0 });
        args.extend_from_slice(&0u32.to_be_bytes());
        self.send_method(1, 50, 10, &args);
        self.expect(50, 11);
    }

    /// Publishes a persistent message to `queue` through the default exchange and waits
    /// for the broker's confirm (given once the message is on disk).
    pub(crate) fn publish_confirmed(&mut self, queue: &str, body: &[u8]) {
        self.send_method(1, 85, 10, &[0]); // confirm.select
        self.expect(85, 11);
        let mut args = 0u16.to_be_bytes().to_vec();
        shortstr(&mut args, "");
        shortstr(&mut args, queue);
        args.push(0);
        self.send_method(1, 60, 40, &args);
        let mut header = 60u16.to_be_bytes().to_vec();
        header.extend_from_slice(&0u16.to_be_bytes());
        header.extend_from_slice(&(body.len() as u64).to_be_bytes());
        header.extend_from_slice(&0x1000u16.to_be_bytes()); // delivery-mode present
        header.push(2); // persistent
        self.write_frame(FRAME_HEADER, 1, &header);
        self.write_frame(FRAME_BODY, 1, body);
        self.expect(60, 80); // basic.ack
    }

    /// basic.get with auto-ack: the body of the next message, or None if the queue is empty.
    pub(crate) fn get(&mut self, queue: &str) -> Option<Vec<u8>> {
        let mut args = 0u16.to_be_bytes().to_vec();
        shortstr(&mut args, queue);
        args.push(1);
        self.send_method(1, 60, 70, &args);
        let reply = self.read_method().unwrap();
        if reply.is(60, 72) {
            return None;
        }
        assert!(
            reply.is(60, 71),
            "expected get-ok or get-empty, got {}.{} {:?}",
            reply.class,
            reply.method,
            String::from_utf8_lossy(&reply.args)
        );
        let (kind, _, header) = self.read_frame().unwrap();
        assert_eq!(kind, FRAME_HEADER);
        let size = u64::from_be_bytes(header[4..12].try_into().unwrap()) as usize;
        let mut body = Vec::new();
        while body.len() < size {
            let (kind, _, chunk) = self.read_frame().unwrap();
            assert_eq!(kind, FRAME_BODY);
            body.extend_from_slice(&chunk);
        }
        Some(body)
    }
}

/// True if something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) fn port_accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).is_ok()
}
