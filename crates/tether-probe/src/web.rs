//! A bare HTTP/1.1 client: connections opened by us, so resolve, connect,
//! TLS, send and first byte each fail as themselves. Probes use one
//! connection per request ([`send`]); the MCP proxy keeps [`Connection`]s
//! open and sends many requests over each.

use std::error::Error as _;
use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use percent_encoding::percent_decode_str;
use tether_resilience::failure::parse_retry_after;
use tether_resilience::{Cause, Failure, Phase};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::task::AbortOnDropHandle;
use url::Url;

use crate::attempt::Attempt;
use crate::target::{Host, display_url};
use crate::{tcp, tls};

/// The `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("tether/", env!("CARGO_PKG_VERSION"));

/// A response whose body has not been read yet. Dropping it and its
/// [`Connection`] closes the connection.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
    /// Drives the connection; aborted (closing the socket) when the last
    /// holder drops it.
    _conn: Arc<AbortOnDropHandle<()>>,
}

/// An open HTTP/1.1 connection: one request at a time, many in a row.
#[derive(Debug)]
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    /// Drives the connection; aborted (closing the socket) when the last
    /// holder drops it.
    conn: Arc<AbortOnDropHandle<()>>,
    host: HeaderValue,
    /// This end's address (a connection bound to an address that left the
    /// machine is dead).
    local: Option<std::net::SocketAddr>,
}

/// A byte stream to a server: plain TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Sends one request to `url` over a connection of its own and waits for
/// the response head, all within the attempt.
///
/// # Cancel safety
///
/// Cancel-safe: dropping the future closes the connection.
pub async fn send(
    method: Method,
    url: &Url,
    headers: &HeaderMap,
    body: Bytes,
    insecure: bool,
    attempt: Attempt,
) -> Result<Response, Failure> {
    let mut conn = connect(url, insecure, attempt).await?;
    match conn.request(method, url, headers, body, attempt).await {
        Ok(response) => Ok(response),
        Err(e) => Err(e.failure),
    }
}

/// Opens a connection to the origin of `url` (TCP, then TLS for `https`)
/// within the attempt.
///
/// # Cancel safety
///
/// Cancel-safe: dropping the future closes what it opened.
pub async fn connect(url: &Url, insecure: bool, attempt: Attempt) -> Result<Connection, Failure> {
    let (io, local) = open_from(url, insecure, attempt).await?;
    let what = format!("connect to {}", display_url(url));
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| classify(&e, Phase::Send, &what))?;
    let conn = Arc::new(AbortOnDropHandle::new(tokio::spawn(async move {
        // Errors surface through the requests; the driver just ends.
        let _ = conn.await;
    })));
    Ok(Connection {
        sender,
        conn,
        host: host_header(url),
        local,
    })
}

/// Opens a byte stream to the host and port of `url`: TCP, then TLS when
/// the scheme is `https` or `wss`.
///
/// # Cancel safety
///
/// Cancel-safe: dropping the future closes what it opened.
pub async fn open(url: &Url, insecure: bool, attempt: Attempt) -> Result<Box<dyn Io>, Failure> {
    Ok(open_from(url, insecure, attempt).await?.0)
}

/// [`open`], and the local address the stream is bound to.
///
/// # Cancel safety
///
/// Cancel-safe, as [`open`].
pub async fn open_from(
    url: &Url,
    insecure: bool,
    attempt: Attempt,
) -> Result<(Box<dyn Io>, Option<std::net::SocketAddr>), Failure> {
    let host = match url.host() {
        Some(url::Host::Domain(d)) => Host::Name(d.to_string()),
        Some(url::Host::Ipv4(ip)) => Host::Ip(ip.into()),
        Some(url::Host::Ipv6(ip)) => Host::Ip(ip.into()),
        None => {
            return Err(Failure::new(
                Phase::Resolve,
                Cause::DnsNxdomain,
                format!("{}: no host", display_url(url)),
            ));
        }
    };
    let port = url
        .port_or_known_default()
        .unwrap_or(if url.scheme() == "wss" { 443 } else { 80 });
    let stream = tcp::connect(&host, port, attempt).await?;
    let local = stream.local_addr().ok();
    let io: Box<dyn Io> = if matches!(url.scheme(), "https" | "wss") {
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
    Ok((io, local))
}

/// A request that failed, and whether it certainly never left this process
/// (then it may be sent again on another connection, whatever it does).
#[derive(Debug)]
pub struct RequestError {
    pub failure: Failure,
    pub unsent: bool,
}

impl Connection {
    /// Whether a request can be sent now: the last response has been read
    /// to its end and the peer has not closed the connection.
    pub fn is_ready(&self) -> bool {
        self.sender.is_ready()
    }

    /// Whether the peer closed the connection (or it failed).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// The address this end of the connection is bound to.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.local
    }

    /// Sends one request for `url` (whose origin this connection is open
    /// to) and waits for the response head, within the attempt.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe for the caller; the connection is then in an unknown
    /// state and should be dropped.
    pub async fn request(
        &mut self,
        method: Method,
        url: &Url,
        headers: &HeaderMap,
        body: Bytes,
        attempt: Attempt,
    ) -> Result<Response, RequestError> {
        let what = format!("{method} {}", display_url(url));
        let mut request = Request::builder().method(method).uri(origin_form(url));
        if let Some(h) = request.headers_mut() {
            h.insert(header::HOST, self.host.clone());
            h.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
            for (name, value) in headers {
                h.insert(name, value.clone());
            }
            // An explicit Authorization header wins over the URL's user.
            if !h.contains_key(header::AUTHORIZATION)
                && let Some(auth) = basic_auth(url)
            {
                h.insert(header::AUTHORIZATION, auth);
            }
        }
        let request = request.body(Full::new(body)).map_err(|e| RequestError {
            failure: Failure::new(Phase::Send, Cause::ProtocolMismatch, format!("{what}: {e}")),
            unsent: true,
        })?;
        let exchange = async {
            // A connection the peer closed hands the request back unsent.
            self.sender
                .try_send_request(request)
                .await
                .map_err(|mut e| {
                    let unsent = e.take_message().is_some();
                    let failure = classify(e.error(), Phase::FirstByte, &what);
                    RequestError { failure, unsent }
                })
        };
        let response = match tokio::time::timeout(attempt.remaining(), exchange).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(RequestError {
                    failure: Failure::timeout(Phase::FirstByte, attempt.budget(), &what),
                    unsent: false,
                });
            }
        };
        let (parts, body) = response.into_parts();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
            _conn: self.conn.clone(),
        })
    }
}

/// How much of a body the `body=` match looks at.
const MAX_MATCH_BODY: usize = 1 << 20;

/// Probes an HTTP target: the status must be in the wanted set and, if
/// asked, the body must contain the wanted text.
pub(crate) async fn probe(
    spec: &crate::target::HttpSpec,
    attempt: Attempt,
) -> Result<crate::Ready, Failure> {
    let what = format!("{} {}", spec.method, display_url(&spec.url));
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
    pub async fn read_body(
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
    pub async fn next_chunk(&mut self, what: &str) -> Result<Option<Bytes>, Failure> {
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
    pub fn content_type(&self) -> String {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default()
    }

    /// A failure for an unwanted status, with the server's Retry-After hint.
    pub fn status_failure(&self, what: &str) -> Failure {
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

/// `Basic base64(user:password)` for a URL with user information
/// (`http://user:pw@host/`), both parts percent-decoded; `None` without. The
/// value is marked sensitive, so hyper never logs it.
pub fn basic_auth(url: &Url) -> Option<HeaderValue> {
    use base64::Engine as _;
    let user = url.username();
    let password = url.password();
    if user.is_empty() && password.is_none() {
        return None;
    }
    let mut credentials: Vec<u8> = percent_decode_str(user).collect();
    credentials.push(b':');
    credentials.extend(percent_decode_str(password.unwrap_or_default()));
    let encoded = base64::engine::general_purpose::STANDARD.encode(&credentials);
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
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

    #[test]
    fn basic_auth_from_the_url() {
        let auth = |text: &str| basic_auth(&Url::parse(text).unwrap());
        // RFC 7617's example: Aladdin:open sesame.
        let value = auth("http://Aladdin:open%20sesame@h/").unwrap();
        assert_eq!(value, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert!(value.is_sensitive());
        assert_eq!(
            auth("https://u%40x:p%3Aw@h/").unwrap(),
            "Basic dUB4OnA6dw=="
        );
        assert_eq!(auth("http://user@h/").unwrap(), "Basic dXNlcjo=");
        assert_eq!(auth("http://:pw@h/").unwrap(), "Basic OnB3");
        assert_eq!(auth("http://h/"), None);
    }
}
