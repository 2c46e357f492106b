//! A minimal WebSocket echo (RFC 6455) for `/ws`: the handshake, then every text and binary
//! frame sent back as it came (unmasked), pings answered with pongs, and a close echoed
//! before the connection ends. Written by hand so the test app needs no WebSocket crate.

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The GUID RFC 6455 §1.3 appends to the client's key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The largest frame payload accepted; a bigger frame closes the connection (1009).
const MAX_PAYLOAD: u64 = 16 << 20;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// The `Sec-WebSocket-Accept` value answering a handshake, or why the request is not one
/// (`Upgrade: websocket`, `Connection: upgrade`, `Sec-WebSocket-Version: 13` and a key).
pub fn accept_key(headers: &HeaderMap) -> Result<HeaderValue, &'static str> {
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err("expected a WebSocket handshake (Upgrade: websocket)");
    }
    if !has(header::SEC_WEBSOCKET_VERSION, "13") {
        return Err("unsupported Sec-WebSocket-Version (want 13)");
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or("missing Sec-WebSocket-Key")?;
    let mut input = key.as_bytes().to_vec();
    input.extend_from_slice(GUID.as_bytes());
    HeaderValue::from_str(&base64(&sha1(&input))).map_err(|_| "bad key")
}

/// Waits for the connection to switch, then echoes frames until the client closes.
pub async fn echo(on: OnUpgrade) {
    let Ok(upgraded) = on.await else { return };
    if let Err(e) = echo_frames(TokioIo::new(upgraded)).await {
        eprintln!("rouse-testapp: websocket ended: {e}");
    }
}

async fn echo_frames<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) -> std::io::Result<()> {
    loop {
        let mut head = [0u8; 2];
        match io.read_exact(&mut head).await {
            Ok(_) => {}
            // The client went away without a close frame.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let fin = head[0] & 0x80 != 0;
        let opcode = head[0] & 0x0F;
        let masked = head[1] & 0x80 != 0;
        let len = match head[1] & 0x7F {
            126 => u64::from(io.read_u16().await?),
            127 => io.read_u64().await?,
            n => u64::from(n),
        };
        if len > MAX_PAYLOAD {
            return write_frame(&mut io, true, OP_CLOSE, &1009u16.to_be_bytes()).await;
        }
        let mut mask = [0u8; 4];
        if masked {
            io.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; len as usize];
        io.read_exact(&mut payload).await?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        match opcode {
            OP_TEXT | OP_BINARY | OP_CONTINUATION => {
                write_frame(&mut io, fin, opcode, &payload).await?
            }
            OP_PING => write_frame(&mut io, true, OP_PONG, &payload).await?,
            OP_PONG => {}
            OP_CLOSE => {
                write_frame(&mut io, true, OP_CLOSE, &payload).await?;
                return io.shutdown().await;
            }
            // An unknown opcode is a protocol error (1002).
            _ => return write_frame(&mut io, true, OP_CLOSE, &1002u16.to_be_bytes()).await,
        }
    }
}

/// Writes one unmasked frame (servers never mask).
async fn write_frame<S: AsyncWrite + Unpin>(
    io: &mut S,
    fin: bool,
    opcode: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(if fin { 0x80 } else { 0 } | opcode);
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    io.write_all(&frame).await?;
    io.flush().await
}

/// SHA-1 (FIPS 180-4), only for the handshake's accept key.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (hi, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hi = hi.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (chunk, v) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&v.to_be_bytes());
    }
    out
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 0x3F) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_and_base64_match_known_values() {
        let hex = |d: [u8; 20]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            hex(sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        let long = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        assert_eq!(hex(sha1(long)), "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn the_rfc_6455_handshake_example_is_accepted() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert_eq!(accept_key(&h).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        h.remove(header::SEC_WEBSOCKET_KEY);
        assert!(accept_key(&h).is_err());
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(accept_key(&h).is_err());
    }

    #[tokio::test]
    async fn frames_echo_pings_pong_and_close_is_returned() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(echo_frames(server));
        // A masked text frame "hi", a masked ping "p", a masked close 1000.
        let mask = [1u8, 2, 3, 4];
        let masked = |op: u8, payload: &[u8]| {
            let mut f = vec![0x80 | op, 0x80 | payload.len() as u8];
            f.extend_from_slice(&mask);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            f
        };
        client.write_all(&masked(OP_TEXT, b"hi")).await.unwrap();
        client.write_all(&masked(OP_PING, b"p")).await.unwrap();
        client
            .write_all(&masked(OP_CLOSE, &1000u16.to_be_bytes()))
            .await
            .unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            got,
            [
                &[0x81, 2][..],
                b"hi",
                &[0x8A, 1],
                b"p",
                &[0x88, 2, 0x03, 0xE8]
            ]
            .concat()
        );
        task.await.unwrap().unwrap();
    }
}
