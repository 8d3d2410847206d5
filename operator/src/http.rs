//! A minimal HTTP/1.1 endpoint for probes and scrapes: `/healthz`, `/readyz`, `/metrics`
//! and `/status`. One request per connection, GET only; enough for kubelet and Prometheus
//! without an HTTP framework in the build.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Longest request head read.
const MAX_REQUEST: usize = 8 * 1024;

/// What the endpoints answer.
pub trait Probe: Send + Sync + 'static {
    /// `Ok` when ready to do the work, else why not.
    fn ready(&self) -> Result<(), String>;
    /// The metrics in the OpenMetrics text format.
    fn metrics(&self) -> String;
    /// A JSON account of the state for `/status`; `None`: no such endpoint.
    fn status(&self) -> Option<String> {
        None
    }
}

/// Listens on `listen`: `HOST:PORT`, where HOST may be an IPv6 address with or without
/// brackets (`fd00::7:8080`, as `$(POD_IP):8080` expands on an IPv6 cluster) or a name.
pub async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    let address = listen.rsplit_once(':').and_then(|(host, port)| {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Some(std::net::SocketAddr::new(
            host.parse().ok()?,
            port.parse().ok()?,
        ))
    });
    match address {
        Some(address) => TcpListener::bind(address).await,
        None => TcpListener::bind(listen).await,
    }
}

/// Serves the endpoints until the task is dropped.
pub async fn serve(listener: TcpListener, probe: Arc<dyn Probe>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors and the like: do not spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let probe = probe.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &*probe)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, probe: &dyn Probe) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") => match probe.ready() {
            Ok(()) => ("200 OK", "text/plain", "ready\n".to_string()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
        },
        ("GET", "/metrics") => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            probe.metrics(),
        ),
        ("GET", "/status") => match probe.status() {
            Some(json) => ("200 OK", "application/json", json),
            None => ("404 Not Found", "text/plain", "not found\n".to_string()),
        },
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// `GET http://<address><path>` with a deadline: the status code and the body. For reading
/// the WAL archiver's `/status` from the operator.
pub async fn get(address: &str, path: &str, deadline: Duration) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(address).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.take(1024 * 1024).read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response")
            })?;
        Ok((code, body.to_string()))
    };
    tokio::time::timeout(deadline, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))?
}

/// Whether a process is ready, or why not; what its `/readyz` answers.
#[derive(Debug)]
pub struct Readiness(std::sync::Mutex<Option<String>>);

impl Readiness {
    /// Not ready yet: starting.
    pub fn starting() -> Self {
        Self(std::sync::Mutex::new(Some("starting".into())))
    }

    /// Ready (`None`) or not, and why.
    pub fn set(&self, why_not: Option<String>) {
        if let Ok(mut state) = self.0.lock() {
            *state = why_not;
        }
    }

    /// `Ok` when ready, else why not.
    pub fn get(&self) -> Result<(), String> {
        match self.0.lock().map(|s| s.clone()) {
            Ok(None) => Ok(()),
            Ok(Some(why)) => Err(why),
            Err(_) => Err("state unavailable".into()),
        }
    }
}

/// The OpenMetrics text of `registry`.
pub fn encode_metrics(registry: &prometheus_client::registry::Registry) -> String {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        text.clear();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::bind;

    #[tokio::test]
    async fn listens_on_addresses_of_every_spelling() {
        for listen in ["127.0.0.1:0", "[::1]:0", "::1:0", "localhost:0"] {
            let listener = bind(listen).await.expect(listen);
            assert!(listener.local_addr().expect("address").ip().is_loopback());
        }
        assert!(bind("no-such-host.invalid:0").await.is_err());
    }
}
