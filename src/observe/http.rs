//! The process's HTTP endpoint (`--metrics-addr`): `/metrics`, `/healthz`, `/readyz`.
//!
//! It runs on a thread of its own with a blocking listener, one connection at a time (a
//! scrape every few seconds, a probe every few seconds): it never shares a thread, lock or
//! runtime with the dataflow. A scrape encodes the registry's atomics as they are; the workers
//! keep stepping meanwhile. Each connection has a 5 s read/write timeout, so a client that
//! connects and sends nothing delays the next scrape by at most that much.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::{health, metrics};

/// The content type of `/metrics`: OpenMetrics text, which Prometheus asks for and reads.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Resolves `--metrics-addr` (`HOST:PORT`) to one socket address.
pub fn resolve(addr: &str) -> Result<SocketAddr, String> {
    let mut all = addr.to_socket_addrs().map_err(|e| format!("{addr:?} is not HOST:PORT ({e}); e.g. 0.0.0.0:9100 or 127.0.0.1:9100"))?;
    all.next().ok_or_else(|| format!("{addr:?} resolves to no address"))
}

/// Binds `addr` and serves the endpoint from a new thread for as long as the process lives.
/// Fails (naming `--metrics-addr` and the address) if it cannot listen there.
pub fn serve(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!("invalid --metrics-addr: {addr} is already in use by another process; give a free port"),
        _ => anyhow::anyhow!("invalid --metrics-addr: cannot listen on {addr}: {e}"),
    })?;
    let local = listener.local_addr()?;
    std::thread::Builder::new().name("citystream-metrics".into()).spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(stream) => {
                    if let Err(e) = answer(stream) {
                        tracing::debug!(error = %e, "metrics endpoint: connection failed");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "metrics endpoint: accept failed"),
            }
        }
    })?;
    tracing::info!(addr = %local, "serving /metrics, /healthz and /readyz");
    Ok(local)
}

/// Reads one request and answers it; the connection is closed after the answer.
fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 << 10 {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = route(method, path);
    let reply = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(reply.as_bytes())?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

/// The answer to `method path`: status line, content type, body.
pub fn route(method: &str, path: &str) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", TEXT, "only GET and HEAD\n".into());
    }
    let probe = |r: health::Readiness, ok: &str| match r {
        Ok(()) => ("200 OK", TEXT, format!("{ok}\n")),
        Err(why) => ("503 Service Unavailable", TEXT, format!("{why}\n")),
    };
    match path {
        "/metrics" => ("200 OK", CONTENT_TYPE, metrics().encode()),
        "/healthz" => probe(super::health().alive(), "ok: every worker is stepping"),
        "/readyz" => probe(super::health().ready(), "ready"),
        _ => ("404 Not Found", TEXT, "citystream serves /metrics, /healthz and /readyz\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_three_paths_over_tcp() {
        let addr = serve("127.0.0.1:0".parse().unwrap()).unwrap();
        let get = |path: &str| {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let m = get("/metrics");
        assert!(
            m.starts_with("HTTP/1.1 200 OK\r\n")
                && m.contains("citystream_records_total{stream=\"gps_data\",outcome=\"dead_letter\"} ")
                && m.ends_with("# EOF\n"),
            "{m}"
        );
        assert!(get("/readyz").starts_with("HTTP/1.1 503"), "not ready before any worker runs");
        assert!(get("/nothing").starts_with("HTTP/1.1 404"));
        let in_use = serve(addr).unwrap_err().to_string();
        assert!(in_use.contains("--metrics-addr") && in_use.contains(&addr.to_string()) && in_use.contains("in use"), "{in_use}");
        assert!(resolve("no-port").unwrap_err().contains("HOST:PORT"));
    }
}
