//! tokio-postgres' TLS hook ([`MakeTlsConnect`]) over tokio-rustls. tokio-postgres decides
//! whether to ask for TLS (`sslmode`); this side does the handshake with the verification the
//! mode asks for (see [`super::url`]), and says in its error what was checked.

use super::url::PostgresTls;
use crate::store::tls::{self, TlsError};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// Makes one [`Connect`] per connection; cheap to clone into the pool.
#[derive(Clone)]
pub(super) struct MakeRustls {
    config: Arc<ClientConfig>,
    /// What the verification is, for the handshake's error: `sslmode=verify-full, ca /ca.pem`.
    checked: Arc<str>,
}

impl MakeRustls {
    /// Reads the CA and client files now, so that a missing one fails the start by name.
    pub(super) fn new(settings: &PostgresTls) -> Result<MakeRustls, TlsError> {
        // `disable` never calls the connector: it needs no roots, which may not exist.
        let verify = settings.mode.verify().unwrap_or(tls::Verify::Nothing);
        let config = tls::client_config(verify, &settings.roots(), settings.identity().as_ref())?;
        let checked = match &settings.root_cert {
            Some(path) => format!("sslmode={}, ca {}", settings.mode, path.display()),
            None => format!("sslmode={}, system roots", settings.mode),
        };
        Ok(MakeRustls { config: Arc::new(config), checked: checked.into() })
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Connect;
    type Error = HandshakeError;

    /// Never fails: tokio-postgres asks for a connector before it knows whether TLS will be used
    /// (with an empty host for Unix sockets, where it is not); a bad name fails the handshake.
    fn make_tls_connect(&mut self, host: &str) -> Result<Connect, HandshakeError> {
        Ok(Connect { config: self.config.clone(), host: host.to_string(), checked: self.checked.clone() })
    }
}

/// One handshake, with the host name the certificate must be for.
pub(super) struct Connect {
    config: Arc<ClientConfig>,
    host: String,
    checked: Arc<str>,
}

type HandshakeFuture<S> = Pin<Box<dyn Future<Output = Result<Stream<S>, HandshakeError>> + Send>>;

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = HandshakeError;
    type Future = HandshakeFuture<S>;

    fn connect(self, socket: S) -> HandshakeFuture<S> {
        Box::pin(async move {
            let name =
                ServerName::try_from(self.host.clone()).map_err(|_| HandshakeError::BadHostName(self.host.clone()))?;
            tokio_rustls::TlsConnector::from(self.config)
                .connect(name, socket)
                .await
                .map(Stream)
                .map_err(|e| HandshakeError::from_io(e, &self.host, &self.checked))
        })
    }
}

/// Why the handshake failed; a refused certificate says what it was checked against.
#[derive(Debug, thiserror::Error)]
pub(super) enum HandshakeError {
    #[error("{0:?} is not a host name or IP address a certificate can be for")]
    BadHostName(String),
    #[error("the server's certificate for {host} was refused ({checked}): {cause}")]
    Refused { host: String, checked: Arc<str>, cause: rustls::Error },
    #[error("TLS handshake failed: {0}")]
    Failed(io::Error),
}

impl HandshakeError {
    fn from_io(e: io::Error, host: &str, checked: &Arc<str>) -> HandshakeError {
        match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(cause @ rustls::Error::InvalidCertificate(_)) => {
                HandshakeError::Refused { host: host.to_string(), checked: checked.clone(), cause: cause.clone() }
            }
            _ => HandshakeError::Failed(e),
        }
    }
}

/// The encrypted connection. No channel binding is offered: SCRAM then authenticates without it,
/// as libpq's default `channel_binding=prefer` allows.
pub(super) struct Stream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Stream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
