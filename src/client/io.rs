//! The client's side of the byte stream, framed.

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use super::ClientError;
use crate::net::Stream;
use crate::protocol::{Frame, decode_frame};

pub struct ClientIo {
    pub stream: Stream,
    pub rbuf: BytesMut,
    /// Largest message accepted from this client.
    pub max_message: usize,
}

impl ClientIo {
    pub fn new(stream: Stream, rbuf: BytesMut, max_message: usize) -> Self {
        ClientIo {
            stream,
            rbuf,
            max_message,
        }
    }

    /// A frame already in the buffer, if a whole one is there.
    pub fn buffered_frame(&mut self) -> Result<Option<Frame>, ClientError> {
        Ok(decode_frame(&mut self.rbuf, self.max_message)?)
    }

    /// The next frame; `Ok(None)` on a clean end of stream between messages.
    /// Cancel-safe: bytes read so far stay in the buffer.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ClientError> {
        loop {
            if let Some(f) = self.buffered_frame()? {
                return Ok(Some(f));
            }
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) if self.rbuf.is_empty() => return Ok(None),
                Ok(0) => {
                    return Err(ClientError::Gone(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "client closed the connection mid-message",
                    )));
                }
                Ok(_) => {}
                Err(e) => return Err(ClientError::Gone(e)),
            }
        }
    }

    /// Writes and flushes `bytes` (under TLS a write alone may leave them in
    /// the session buffer, see `net`).
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.send(bytes).await.map_err(ClientError::Gone)
    }
}
