//! A bare HTTP/1.1 client for probes: one connection per request, opened by
//! us, so resolve, connect, TLS, send and first byte each fail as themselves.

use std::error::Error as _;
use std::io;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tether_resilience::failure::parse_retry_after;
use tether_resilience::{Cause, Failure, Phase};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use url::Url;

use crate::attempt::Attempt;
use crate::target::Host;
use crate::{tcp, tls};

/// The `User-Agent` of every probe request.
pub(crate) const USER_AGENT: &str = concat!("tether/", env!("CARGO_PKG_VERSION"));

/// A response whose body has not been read yet. Dropping it closes the
/// connection.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    body: Incoming,
    /// Drives the connection; aborted (closing the socket) on drop.
    _conn: ConnTask,
}

#[derive(Debug)]
struct ConnTask(JoinHandle<()>);

impl Drop for ConnTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Sends one request to `url` and waits for the response head, all within
/// the attempt.
///
/// # Cancel safety
///
/// Cancel-safe: dropping the future closes the connection.
pub(crate) async fn send(
    method: Method,
    url: &Url,
    headers: &HeaderMap,
    body: Bytes,
    insecure: bool,
    attempt: Attempt,
) -> Result<Response, Failure> {
    let host = match url.host() {
        Some(url::Host::Domain(d)) => Host::Name(d.to_string()),
        Some(url::Host::Ipv4(ip)) => Host::Ip(ip.into()),
        Some(url::Host::Ipv6(ip)) => Host::Ip(ip.into()),
        None => {
            return Err(Failure::new(
                Phase::Resolve,
                Cause::DnsNxdomain,
                format!("{url}: no host"),
            ));
        }
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let stream = tcp::connect(&host, port, attempt).await?;
    let io: Box<dyn Io> = if url.scheme() == "https" {
        let what = format!("TLS handshake with {host}:{port}");
        let config = tls::client_config(insecure)?;
        let name = url
            .host()
            .map(|h| tls::server_name(&h))
            .transpose()
            .map_err(|e| Failure::tls(tether_resilience::failure::TlsError::Certificate, &what, e))?
            .ok_or_else(|| {
                Failure::new(Phase::Tls, Cause::DnsNxdomain, format!("{what}: no host"))
            })?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let handshake = async {
            connector
                .connect(name, stream)
                .await
                .map_err(|e| tls::classify(&e, &what))
        };
        Box::new(attempt.phase(Phase::Tls, &what, handshake).await?)
    } else {
        Box::new(stream)
    };

    let what = format!("{method} {url}");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| classify(&e, Phase::Send, &what))?;
    let conn = ConnTask(tokio::spawn(async move {
        // Errors surface through the request; the driver just ends.
        let _ = conn.await;
    }));

    let mut request = Request::builder()
        .method(method.clone())
        .uri(origin_form(url));
    if let Some(h) = request.headers_mut() {
        h.insert(header::HOST, host_header(url));
        h.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        for (name, value) in headers {
            h.insert(name, value.clone());
        }
    }
    let request = request
        .body(Full::new(body))
        .map_err(|e| Failure::new(Phase::Send, Cause::ProtocolMismatch, format!("{what}: {e}")))?;
    let exchange = async {
        sender
            .send_request(request)
            .await
            .map_err(|e| classify(&e, Phase::FirstByte, &what))
    };
    let response = attempt.phase(Phase::FirstByte, &what, exchange).await?;
    let (parts, body) = response.into_parts();
    Ok(Response {
        status: parts.status,
        headers: parts.headers,
        body,
        _conn: conn,
    })
}

/// How much of a body the `body=` match looks at.
const MAX_MATCH_BODY: usize = 1 << 20;

/// Probes an HTTP target: the status must be in the wanted set and, if
/// asked, the body must contain the wanted text.
pub(crate) async fn probe(
    spec: &crate::target::HttpSpec,
    attempt: Attempt,
) -> Result<crate::Ready, Failure> {
    let what = format!("{} {}", spec.method, spec.url);
    let mut headers = HeaderMap::new();
    for (name, value) in &spec.headers {
        headers.append(name, value.clone());
    }
    let response = send(
        spec.method.clone(),
        &spec.url,
        &headers,
        Bytes::new(),
        spec.insecure,
        attempt,
    )
    .await?;
    let status = response.status;
    if !spec.status.contains(status.as_u16()) {
        let failure = response.status_failure(&what);
        // A little of the body often says why ("starting", "db down").
        let quick = Attempt::new(
            attempt
                .remaining()
                .min(std::time::Duration::from_millis(200)),
        );
        let body = response
            .read_body(512, &what, quick)
            .await
            .unwrap_or_default();
        let wanted = format!(" (wanted {})", spec.status);
        let body = match crate::snippet(&body) {
            s if s.is_empty() => String::new(),
            s => format!("; body: {s}"),
        };
        let detail = format!("{}{wanted}{body}", failure.detail);
        return Err(failure.with_detail(detail));
    }
    if let Some(needle) = &spec.body {
        let body = response.read_body(MAX_MATCH_BODY, &what, attempt).await?;
        if !contains(&body, needle.as_bytes()) {
            let shown = match crate::snippet(&body) {
                s if s.is_empty() => "the body is empty".to_string(),
                s => format!("body: {s}"),
            };
            return Err(Failure::new(
                Phase::Stream,
                Cause::ProbeUnhealthy,
                format!(
                    "{what}: HTTP {}, but the body does not contain {needle:?}; {shown}",
                    status.as_u16()
                ),
            ));
        }
        return Ok(crate::Ready::new(format!(
            "HTTP {} with {needle:?} in the body",
            status.as_u16()
        )));
    }
    Ok(crate::Ready::new(format!("HTTP {}", status.as_u16())))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

impl Response {
    /// Reads the body, keeping at most `cap` bytes; the rest is not read.
    pub(crate) async fn read_body(
        mut self,
        cap: usize,
        what: &str,
        attempt: Attempt,
    ) -> Result<Bytes, Failure> {
        let reading = async {
            let mut out = BytesMut::new();
            while out.len() < cap {
                match self.body.frame().await {
                    None => break,
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            let room = cap - out.len();
                            out.extend_from_slice(&data[..data.len().min(room)]);
                        }
                    }
                    Some(Err(e)) => return Err(classify(&e, Phase::Stream, what)),
                }
            }
            Ok(out.freeze())
        };
        attempt.phase(Phase::Stream, what, reading).await
    }

    /// The next chunk of the body, or `None` at its end.
    pub(crate) async fn next_chunk(&mut self, what: &str) -> Result<Option<Bytes>, Failure> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
                Some(Err(e)) => return Err(classify(&e, Phase::Stream, what)),
            }
        }
    }

    /// The media type of the body, lower-cased, without parameters.
    pub(crate) fn content_type(&self) -> String {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default()
    }

    /// A failure for an unwanted status, with the server's Retry-After hint.
    pub(crate) fn status_failure(&self, what: &str) -> Failure {
        let retry_after = self
            .headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        Failure::http_status(self.status.as_u16(), retry_after, what)
    }
}

/// Classifies a hyper error by what it says, or by the I/O error under it.
fn classify(err: &hyper::Error, phase: Phase, what: &str) -> Failure {
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Failure::from_io(io, phase, what);
        }
        source = e.source();
    }
    if err.is_parse() || err.is_parse_status() {
        return Failure::new(
            phase,
            Cause::ProtocolMismatch,
            format!("{what}: the peer does not speak HTTP/1.1 ({err})"),
        );
    }
    if err.is_incomplete_message() || err.is_canceled() || err.is_closed() {
        let cause = if phase == Phase::Stream {
            Cause::ResetMidStream
        } else {
            Cause::ResetBeforeResponse
        };
        let words = if phase == Phase::Stream {
            "the connection closed in the middle of the response"
        } else {
            "the connection closed before a response"
        };
        return Failure::new(phase, cause, format!("{what}: {words}"));
    }
    Failure::new(phase, Cause::ResetBeforeResponse, format!("{what}: {err}"))
}

/// `/path?query`, the request target of an HTTP/1.1 request to an origin.
fn origin_form(url: &Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    }
}

fn host_header(url: &Url) -> HeaderValue {
    let host = url.host_str().unwrap_or_default();
    let text = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    // A host that parsed as part of a URL is a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("localhost"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_targets() {
        let url = Url::parse("http://[::1]:8080/a/b?c=d#frag").unwrap();
        assert_eq!(origin_form(&url), "/a/b?c=d");
        assert_eq!(host_header(&url), "[::1]:8080");
        let url = Url::parse("https://example.com").unwrap();
        assert_eq!(origin_form(&url), "/");
        assert_eq!(host_header(&url), "example.com");
    }
}
