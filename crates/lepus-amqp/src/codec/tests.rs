//! The codec's unit tests: encoder and decoder against each other and against
//! `amq-protocol`, and the decoder against hostile input.

#[cfg(test)]
mod frames {
    use amq_protocol::protocol::{AMQPClass, BasicProperties};
    use bytes::BytesMut;

    use crate::codec::encode::put_frame;
    use crate::codec::*;
    use crate::error::ErrorKind;
    use amq_protocol::protocol::basic;

    fn roundtrip(method: AMQPClass) -> Frame {
        let mut out = Vec::new();
        put_method(&mut out, 3, &method).unwrap();
        let mut buf = BytesMut::from(&out[..]);
        let frame = decode_frame(&mut buf, 4096).unwrap().unwrap();
        assert!(buf.is_empty());
        frame
    }

    #[test]
    fn deliver_fast_path_matches_the_generic_encoder() {
        let frame = roundtrip(AMQPClass::Basic(basic::AMQPMethod::Deliver(
            basic::Deliver {
                consumer_tag: "ctag".into(),
                delivery_tag: 42,
                redelivered: true,
                exchange: "ex".into(),
                routing_key: "rk".into(),
            },
        )));
        let Frame::Deliver(3, args) = frame else {
            panic!("not a deliver: {frame:?}")
        };
        assert_eq!(args.consumer_tag.as_str(), "ctag");
        assert_eq!(args.delivery_tag, 42);
        assert!(args.redelivered);
        assert_eq!(&*args.exchange, "ex");
        assert_eq!(&*args.routing_key, "rk");
    }

    #[test]
    fn settle_encodes_like_amq_protocol() {
        let mut ours = Vec::new();
        put_settle(
            &mut ours,
            7,
            99,
            Settle::Nack {
                multiple: true,
                requeue: false,
            },
        );
        let mut theirs = Vec::new();
        put_method(
            &mut theirs,
            7,
            &AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: 99,
                multiple: true,
                requeue: false,
            })),
        )
        .unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn publish_splits_the_body_at_frame_max() {
        let mut out = Vec::new();
        let body = vec![7u8; 10_000];
        put_publish(
            &mut out,
            &mut Vec::new(),
            1,
            "",
            "q",
            false,
            &BasicProperties::default(),
            &body,
            4096,
        )
        .unwrap();
        // A broker never sends basic.publish: decode from the content header on.
        let method_len = u32::from_be_bytes(out[3..7].try_into().unwrap()) as usize + 8;
        let mut buf = BytesMut::from(&out[method_len..]);
        let mut bodies = Vec::new();
        while let Some(frame) = decode_frame(&mut buf, 4096).unwrap() {
            if let Frame::Body(_, b) = frame {
                assert!(b.len() <= 4096 - FRAME_OVERHEAD);
                bodies.push(b);
            }
        }
        assert_eq!(bodies.len(), 3);
        assert_eq!(bodies.concat(), body);
    }

    #[test]
    fn oversized_frame_is_refused_before_buffering() {
        let mut buf = BytesMut::from(&[1u8, 0, 1, 0, 1, 0, 0][..]);
        let err = decode_frame(&mut buf, 4096).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FrameTooLarge);
    }

    /// A content header frame on channel 1: class 60, body size 5, headers flag, `table`.
    fn header_frame(table: &[u8]) -> BytesMut {
        let mut payload = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0x20, 0x00];
        payload.extend_from_slice(&(table.len() as u32).to_be_bytes());
        payload.extend_from_slice(table);
        let mut out = Vec::new();
        put_frame(&mut out, FRAME_HEADER, 1, |o| o.extend_from_slice(&payload));
        BytesMut::from(&out[..])
    }

    #[test]
    fn an_undecodable_header_refuses_the_message_not_the_frame_stream() {
        // An unknown field type 'Z' in the headers: the guard refuses it.
        let mut buf = header_frame(&[1, b'k', b'Z', 0]);
        buf.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
        match decode_frame(&mut buf, 4096).unwrap().unwrap() {
            Frame::BadHeader {
                channel: 1,
                body_size: 5,
                error,
            } => assert_eq!(error.kind(), ErrorKind::Protocol),
            other => panic!("expected a refused header, got {other:?}"),
        }
        // The stream is still in step: the next frame decodes.
        assert!(matches!(
            decode_frame(&mut buf, 4096).unwrap(),
            Some(Frame::Heartbeat)
        ));
        // Too short to carry a body size: the framing is lost, a connection error.
        let mut out = Vec::new();
        put_frame(&mut out, FRAME_HEADER, 1, |o| {
            o.extend_from_slice(&[0, 60, 0])
        });
        let mut buf = BytesMut::from(&out[..]);
        assert_eq!(
            decode_frame(&mut buf, 4096).unwrap_err().kind(),
            ErrorKind::Protocol
        );
    }

    #[test]
    fn missing_frame_end_is_a_protocol_error() {
        let mut buf = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 0, 0xCD][..]);
        assert_eq!(
            decode_frame(&mut buf, 4096).unwrap_err().kind(),
            ErrorKind::Protocol
        );
    }
}

#[cfg(test)]
mod nesting {
    use bytes::BytesMut;

    use crate::codec::encode::put_frame;
    use crate::codec::*;
    use crate::error::ErrorKind;

    /// A hostile broker could nest field tables as deep as one frame allows.
    fn nested_headers_frame(depth: usize) -> Vec<u8> {
        // content header: class 60, weight 0, size 0, flags: headers only (bit 13).
        let mut payload = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0x00];
        // Lengths: build from the inside out.
        let mut inner: Vec<u8> = Vec::new();
        for _ in 0..depth {
            let mut t = vec![0u8, b'F'];
            t.extend_from_slice(&(inner.len() as u32).to_be_bytes());
            t.extend_from_slice(&inner);
            inner = t;
        }
        payload.extend_from_slice(&(inner.len() as u32).to_be_bytes());
        payload.extend_from_slice(&inner);
        let mut out = Vec::new();
        put_frame(&mut out, FRAME_HEADER, 1, |o| o.extend_from_slice(&payload));
        out
    }

    #[test]
    fn deeply_nested_tables_do_not_overflow_the_stack() {
        let frame = nested_headers_frame(20_000);
        let mut check = BytesMut::from(&frame[..]);
        match decode_frame(&mut check, 1 << 20).unwrap().unwrap() {
            Frame::BadHeader {
                channel: 1,
                body_size: 0,
                error,
            } => assert_eq!(error.kind(), ErrorKind::Protocol),
            other => panic!("expected a refused header, got {other:?}"),
        }
        let mut buf = BytesMut::from(&frame[..]);
        let result = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || decode_frame(&mut buf, 1 << 20).map(|_| ()))
            .unwrap()
            .join();
        assert!(result.is_ok(), "decoding panicked or overflowed");
    }
}
