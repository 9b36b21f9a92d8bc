//! The blob channel's wire format. A block travels as its raw bytes after a
//! tag and a length: no CBOR byte string to build, grow and copy again for
//! every megabyte. Every other blob message is CBOR after its tag.
//!
//! ```text
//! request  = CBOR(BlobRequest)                      (at most 4 KiB)
//! response = 0x00 len:u32-be bytes[len]             a block (at most 16 MiB)
//!          | 0x01 CBOR(BlobResponse)                anything else
//! ```

use std::io;

use futures_util::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use pesc_protocol::wire::{BlobRequest, BlobResponse};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/pesc/blob/2");

const MAX_REQUEST: u64 = 4 << 10;
/// The largest response: a block, or a tree (32 bytes per MiB of blob).
const MAX_RESPONSE: u64 = 16 << 20;
const TAG_BLOCK: u8 = 0;
const TAG_CBOR: u8 = 1;

#[derive(Debug, Clone, Default)]
pub struct BlobCodec;

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn decode<M: DeserializeOwned>(bytes: &[u8]) -> io::Result<M> {
    cbor4ii::serde::from_slice(bytes).map_err(|e| invalid(format!("bad blob message: {e}")))
}

fn encode<M: Serialize>(msg: &M) -> io::Result<Vec<u8>> {
    cbor4ii::serde::to_vec(Vec::new(), msg).map_err(io::Error::other)
}

/// Reads the rest of the stream, refusing more than `max` bytes.
async fn read_all<T: AsyncRead + Unpin + Send>(io: &mut T, max: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(max + 1).read_to_end(&mut buf).await?;
    if buf.len() as u64 > max {
        return Err(invalid(format!("blob message over {max} bytes")));
    }
    Ok(buf)
}

impl libp2p::request_response::Codec for BlobCodec {
    type Protocol = StreamProtocol;
    type Request = BlobRequest;
    type Response = BlobResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<BlobRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode(&read_all(io, MAX_REQUEST).await?)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<BlobResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut tag = [0u8; 1];
        io.read_exact(&mut tag).await?;
        match tag[0] {
            TAG_BLOCK => {
                let mut len = [0u8; 4];
                io.read_exact(&mut len).await?;
                let len = u32::from_be_bytes(len) as u64;
                if len > MAX_RESPONSE {
                    return Err(invalid(format!(
                        "block of {len} bytes: over {MAX_RESPONSE}"
                    )));
                }
                let mut data = vec![0u8; len as usize];
                io.read_exact(&mut data).await?;
                Ok(BlobResponse::Block { data })
            }
            TAG_CBOR => decode(&read_all(io, MAX_RESPONSE).await?),
            t => Err(invalid(format!("unknown blob response tag {t}"))),
        }
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: BlobRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&encode(&req)?).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: BlobResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match res {
            BlobResponse::Block { data } => {
                let len = u32::try_from(data.len())
                    .ok()
                    .filter(|l| u64::from(*l) <= MAX_RESPONSE)
                    .ok_or_else(|| invalid("block too large to send"))?;
                let mut head = [TAG_BLOCK, 0, 0, 0, 0];
                head[1..].copy_from_slice(&len.to_be_bytes());
                io.write_all(&head).await?;
                io.write_all(&data).await
            }
            other => {
                let mut msg = vec![TAG_CBOR];
                msg.extend(encode(&other)?);
                io.write_all(&msg).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::io::Cursor;
    use libp2p::request_response::Codec;
    use pesc_protocol::BlobHash;

    fn roundtrip(res: BlobResponse) -> io::Result<BlobResponse> {
        block_on(async {
            let mut buf = Cursor::new(Vec::new());
            BlobCodec.write_response(&PROTOCOL, &mut buf, res).await?;
            let mut rd = Cursor::new(buf.into_inner());
            BlobCodec.read_response(&PROTOCOL, &mut rd).await
        })
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn blocks_and_messages_round_trip() {
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        match roundtrip(BlobResponse::Block { data: data.clone() }).unwrap() {
            BlobResponse::Block { data: back } => assert_eq!(back, data),
            other => panic!("{other:?}"),
        }
        match roundtrip(BlobResponse::Tree {
            total: 5,
            tree: vec![7; 64],
        })
        .unwrap()
        {
            BlobResponse::Tree { total, tree } => assert_eq!((total, tree), (5, vec![7; 64])),
            other => panic!("{other:?}"),
        }
        let req = BlobRequest::Block {
            hash: BlobHash::of(b"x"),
            index: 3,
        };
        let back = block_on(async {
            let mut buf = Cursor::new(Vec::new());
            BlobCodec.write_request(&PROTOCOL, &mut buf, req).await?;
            let mut rd = Cursor::new(buf.into_inner());
            BlobCodec.read_request(&PROTOCOL, &mut rd).await
        })
        .unwrap();
        assert!(matches!(back, BlobRequest::Block { index: 3, .. }));
    }

    #[test]
    fn garbled_responses_are_errors() {
        let read = |bytes: Vec<u8>| {
            block_on(async {
                BlobCodec
                    .read_response(&PROTOCOL, &mut Cursor::new(bytes))
                    .await
            })
        };
        // Unknown tag, a block longer than allowed, a block cut short, bad CBOR.
        assert!(read(vec![9, 1, 2]).is_err());
        assert!(read(vec![TAG_BLOCK, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(read(vec![TAG_BLOCK, 0, 0, 0, 10, 1, 2]).is_err());
        assert!(read(vec![TAG_CBOR, 0xff, 0x00]).is_err());
        assert!(read(vec![]).is_err());
    }
}
