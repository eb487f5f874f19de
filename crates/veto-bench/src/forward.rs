//! `veto-bench forward` (hidden): a plain HTTP/1.1 reverse proxy with no
//! authorization, built like `veto proxy` (hyper server, hyper-util
//! client, `TCP_NODELAY` both ways, `Authorization` and `Host` dropped), as
//! the baseline for `proxy-overhead`: what forwarding alone costs on this
//! machine. Like `veto proxy`, it runs on one thread when the process may
//! use one core. Prints `forward listening on http://ADDR`.

use clap::Args;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{header, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Arguments of `veto-bench forward`.
#[derive(Args, Debug)]
pub(crate) struct ForwardArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// The upstream, such as `http://127.0.0.1:9000`.
    #[arg(long)]
    upstream: String,
}

pub(crate) async fn run(a: ForwardArgs) -> anyhow::Result<()> {
    let upstream: Uri = a.upstream.parse()?;
    let listener = tokio::net::TcpListener::bind(a.listen).await?;
    println!("forward listening on http://{}", listener.local_addr()?);
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: Request<Incoming>| {
                let (client, upstream) = (client.clone(), upstream.clone());
                async move {
                    let mut parts = upstream.into_parts();
                    parts.path_and_query = req.uri().path_and_query().cloned();
                    *req.uri_mut() = Uri::from_parts(parts).map_err(std::io::Error::other)?;
                    let h = req.headers_mut();
                    h.remove(header::AUTHORIZATION);
                    h.remove(header::HOST);
                    h.remove(header::CONNECTION);
                    client.request(req).await.map_err(std::io::Error::other)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
