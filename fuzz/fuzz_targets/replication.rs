//! What a (hostile) server sends on the replication connection, fed in pieces as reads would:
//! messages, DataRows and the CopyData sub-messages of BASE_BACKUP. Never a panic, and no
//! message larger than the bound is accepted.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use postgres_protocol::message::backend::Message;
use walseal::backup::protocol;

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    // Longer inputs only repeat what shorter ones reach, byte by byte.
    let rest = &rest[..rest.len().min(4 << 10)];
    let mut buf = BytesMut::new();
    for piece in rest.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match protocol::parse_message(&mut buf) {
                Ok(Some(Message::DataRow(body))) => {
                    let _ = protocol::decode_row(&body);
                }
                Ok(Some(Message::CopyData(body))) => {
                    let _ = protocol::decode_copy_data(body.into_bytes());
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
});
