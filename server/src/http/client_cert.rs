//! Whether the caller of a TLS connection presented a client certificate, as a request
//! extension: rustls has already verified any certificate presented against the listener's
//! `tls_client_ca_file` during the handshake, so presence is proof. The join challenge routes
//! require one on a listener with a client CA even where other routes do not (a listener without
//! `tls_require_and_verify_client_cert` lets callers without a certificate in).

use std::future::Future;
use std::io;
use std::pin::Pin;

use axum_server::accept::Accept;
use tokio_rustls::server::TlsStream;
use tower::Layer;

/// `true` when the connection's peer presented a certificate the listener's client CA signed.
#[derive(Debug, Clone, Copy)]
pub struct ClientCertificate(pub bool);

/// Wraps the TLS acceptor: each connection's service adds its [`ClientCertificate`].
#[derive(Debug, Clone)]
pub struct ClientCertAcceptor<A> {
    pub inner: A,
}

impl<A, I, S, X> Accept<I, S> for ClientCertAcceptor<A>
where
    A: Accept<I, S, Stream = TlsStream<X>>,
    A::Future: Send + 'static,
    A::Service: Send + 'static,
    X: Send + 'static,
{
    type Stream = TlsStream<X>;
    type Service = axum::middleware::AddExtension<A::Service, ClientCertificate>;
    type Future =
        Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send + 'static>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let accepted = self.inner.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = accepted.await?;
            let presented = stream
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|chain| !chain.is_empty());
            Ok((
                stream,
                axum::Extension(ClientCertificate(presented)).layer(service),
            ))
        })
    }
}
