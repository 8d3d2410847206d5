//! pgbackup's own connections send a password only through SCRAM. A server may ask the
//! client for its password in clear text (`password` in `pg_hba.conf`) or as an MD5 hash
//! (`md5` with an MD5-stored password, crackable offline); a server that is not the one
//! the credentials are for would get them either way. The guard sits between the socket
//! (or the TLS session) and the PostgreSQL protocol, reads the server's authentication
//! requests as they arrive, and ends the connection on any request other than SCRAM or
//! "no password needed" — before the client has seen it, so nothing is ever sent.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

/// The server asked for a login pgbackup does not send a password through.
#[derive(Debug, thiserror::Error)]
#[error(
    "the server asked for {method}; pgbackup sends a password only through SCRAM (pg_hba.conf method scram-sha-256, or md5 with the password stored as SCRAM)"
)]
pub struct WeakLoginRefused {
    /// What was asked for, in words.
    pub method: &'static str,
}

/// Where the reader is in the server's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// The one-byte answer to the client's TLS request.
    TlsAnswer,
    /// A message header (type and length), `n` bytes of it read so far.
    Header { kind: u8, length: [u8; 4], n: usize },
    /// The request code of an authentication message, `body` bytes left in it.
    Code { code: [u8; 4], n: usize, body: u32 },
    /// The rest of a message.
    Skip(u32),
    /// The SCRAM server-first message (`r=…,s=…,i=…`), `body` bytes left of it.
    ScramFirst { text: Vec<u8>, body: u32 },
    /// Logged in, or TLS began (checked inside it): nothing more to look at.
    Done,
    /// A request was refused: the connection is over.
    Refused,
}

/// A stream whose server side is checked for authentication requests.
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    state: State,
}

impl<S> Guarded<S> {
    /// Guards a new socket; `tls_request`: the client first asks the server for TLS.
    pub fn socket(inner: S, tls_request: bool) -> Self {
        let state = if tls_request {
            State::TlsAnswer
        } else {
            State::header()
        };
        Self { inner, state }
    }

    /// Passes everything through (`allowWeakAuthentication`).
    pub fn unchecked(inner: S) -> Self {
        Self {
            inner,
            state: State::Done,
        }
    }

    fn inside_tls(inner: S) -> Self {
        Self {
            inner,
            state: State::header(),
        }
    }
}

impl State {
    fn header() -> Self {
        State::Header {
            kind: 0,
            length: [0; 4],
            n: 0,
        }
    }

    /// Reads `bytes` from the server; an error for a request to refuse.
    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), WeakLoginRefused> {
        while let Some((&byte, rest)) = bytes.split_first() {
            match self {
                State::Done => return Ok(()),
                State::Refused => return Err(refused("a login already refused")),
                State::TlsAnswer => {
                    // As the client reads it: 'S' begins TLS, any other byte means none
                    // and is dropped.
                    *self = match byte {
                        b'S' => State::Done,
                        _ => State::header(),
                    };
                    bytes = rest;
                }
                State::ScramFirst { text, body } => {
                    let taken = (*body as usize).min(bytes.len());
                    text.extend_from_slice(&bytes[..taken]);
                    *body -= taken as u32;
                    bytes = &bytes[taken..];
                    if *body == 0 {
                        check_iterations(text)?;
                        *self = State::header();
                    }
                }
                State::Skip(left) => {
                    let skipped = (*left as usize).min(bytes.len());
                    bytes = &bytes[skipped..];
                    *left -= skipped as u32;
                    if *left == 0 {
                        *self = State::header();
                    }
                }
                State::Header { kind, length, n } => {
                    if *n == 0 {
                        *kind = byte;
                    } else {
                        length[*n - 1] = byte;
                    }
                    *n += 1;
                    bytes = rest;
                    if *n == 5 {
                        let body = u32::from_be_bytes(*length).saturating_sub(4);
                        *self = match *kind {
                            b'R' if body >= 4 => State::Code {
                                code: [0; 4],
                                n: 0,
                                body: body - 4,
                            },
                            _ if body == 0 => State::header(),
                            _ => State::Skip(body),
                        };
                    }
                }
                State::Code { code, n, body } => {
                    code[*n] = byte;
                    *n += 1;
                    bytes = rest;
                    if *n == 4 {
                        let body = *body;
                        *self = match u32::from_be_bytes(*code) {
                            // Logged in: the rest is the session's.
                            0 => State::Done,
                            // SASL continue: the server's salt and iteration count.
                            11 if body <= MAX_SCRAM_FIRST => State::ScramFirst {
                                text: Vec::with_capacity(body as usize),
                                body,
                            },
                            11 => return Err(refused("a SCRAM exchange out of bounds")),
                            // SASL (SCRAM) start and final.
                            10 | 12 if body == 0 => State::header(),
                            10 | 12 => State::Skip(body),
                            3 => return Err(refused("the password in clear text")),
                            5 => return Err(refused("an MD5 hash of the password")),
                            _ => return Err(refused("a login method other than SCRAM")),
                        };
                    }
                }
            }
        }
        Ok(())
    }
}

/// The longest server-first SCRAM message read (nonce, salt and count are far shorter).
const MAX_SCRAM_FIRST: u32 = 4096;

/// The fewest SCRAM iterations accepted: PostgreSQL's default and RFC 7677's minimum. A
/// server that asks for fewer makes what it receives quick to crack.
const MIN_SCRAM_ITERATIONS: u32 = 4096;

fn check_iterations(text: &[u8]) -> Result<(), WeakLoginRefused> {
    let iterations = std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.split(',').find_map(|part| part.strip_prefix("i=")))
        .and_then(|i| i.parse::<u32>().ok());
    match iterations {
        Some(i) if i >= MIN_SCRAM_ITERATIONS => Ok(()),
        _ => Err(refused("SCRAM with fewer than 4096 iterations")),
    }
}

fn refused(method: &'static str) -> WeakLoginRefused {
    WeakLoginRefused { method }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let mut next = self.state.clone();
        if let Err(refusal) = next.feed(&buf.filled()[before..]) {
            // The request never reaches the client, which therefore sends nothing.
            buf.set_filled(before);
            self.state = State::Refused;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                refusal,
            )));
        }
        self.state = next;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: TlsStream + Unpin> TlsStream for Guarded<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

/// A TLS connector whose sessions are guarded inside the encryption, where the server's
/// requests are (unless `checked` is off).
pub struct GuardedTls<T> {
    inner: T,
    checked: bool,
}

impl<T> GuardedTls<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, checked: bool) -> Self {
        Self { inner, checked }
    }
}

impl<S, T> TlsConnect<S> for GuardedTls<T>
where
    T: TlsConnect<S> + Send + 'static,
    T::Future: Send,
    S: Send + 'static,
{
    type Stream = Guarded<T::Stream>;
    type Error = T::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Stream, T::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let checked = self.checked;
        let handshake = self.inner.connect(stream);
        Box::pin(async move {
            let session = handshake.await?;
            Ok(if checked {
                Guarded::inside_tls(session)
            } else {
                Guarded::unchecked(session)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![kind];
        bytes.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    fn auth(code: u32, rest: &[u8]) -> Vec<u8> {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(rest);
        message(b'R', &body)
    }

    /// Feeds `bytes` in pieces of `step`, as reads may deliver them.
    fn run(start: State, bytes: &[u8], step: usize) -> Result<State, WeakLoginRefused> {
        let mut state = start;
        for piece in bytes.chunks(step) {
            state.feed(piece)?;
        }
        Ok(state)
    }

    #[test]
    fn scram_and_trust_pass_in_any_pieces() {
        let mut scram = b"N".to_vec();
        scram.extend(auth(10, b"SCRAM-SHA-256\0\0"));
        scram.extend(auth(11, b"r=nonce,s=c2FsdA==,i=4096"));
        scram.extend(auth(12, b"v=signature"));
        scram.extend(auth(0, b""));
        let trust = [b"N".to_vec(), auth(0, b"")].concat();
        for step in [1, 2, 3, 7, 1000] {
            assert_eq!(run(State::TlsAnswer, &scram, step).ok(), Some(State::Done));
            assert_eq!(run(State::TlsAnswer, &trust, step).ok(), Some(State::Done));
        }
        assert_eq!(
            run(State::TlsAnswer, b"S\x16\x03\x01", 1).ok(),
            Some(State::Done),
            "TLS: checked inside"
        );
    }

    #[test]
    fn clear_text_md5_and_others_are_refused_in_any_pieces() {
        for (code, words) in [
            (3, "clear text"),
            (5, "MD5"),
            (7, "other than SCRAM"),
            (2, "other than SCRAM"),
        ] {
            let bytes = [b"N".to_vec(), auth(code, b"salt")].concat();
            for step in [1, 2, 5, 1000] {
                let err = run(State::TlsAnswer, &bytes, step).expect_err("refused");
                assert!(err.to_string().contains(words), "{err}");
            }
            // After a notice, and without a TLS request.
            let bytes = [message(b'N', b"SNOTICE\0\0"), auth(code, b"")].concat();
            assert!(run(State::header(), &bytes, 3).is_err());
        }
        // Any answer but 'S' is "no TLS", one byte, as the client reads it: what follows
        // is read from the next byte on.
        let disguised = [b"X".to_vec(), auth(3, b"")].concat();
        for step in [1, 2, 1000] {
            assert!(run(State::TlsAnswer, &disguised, step).is_err());
        }
        // A SCRAM exchange with a count too low to protect what the client sends.
        let weak = [
            b"N".to_vec(),
            auth(10, b"SCRAM-SHA-256\0\0"),
            auth(11, b"r=nonce,s=c2FsdA==,i=1"),
        ]
        .concat();
        for step in [1, 3, 1000] {
            let err = run(State::TlsAnswer, &weak, step).expect_err("refused");
            assert!(err.to_string().contains("4096 iterations"), "{err}");
        }
    }

    #[test]
    fn a_refused_connection_stays_refused() {
        let mut state = State::TlsAnswer;
        assert!(
            state
                .feed(&[b"N".to_vec(), auth(5, b"salt")].concat())
                .is_err()
        );
        let mut refused = State::Refused;
        assert!(refused.feed(&auth(0, b"")).is_err());
    }
}
