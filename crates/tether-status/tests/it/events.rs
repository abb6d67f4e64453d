//! `/api/events`: server-sent events in order, lag, keep-alive, shutdown.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::Method;
use hyper::body::Incoming;
use serde_json::json;
use tether_status::{Event, ServeOptions, State};

use crate::support::{Server, service, stack, within};

/// One server-sent event block: its fields, or a comment.
#[derive(Debug, PartialEq)]
enum Message {
    Event {
        event: String,
        data: serde_json::Value,
    },
    Comment(String),
}

/// Reads an event stream block by block.
struct Stream {
    body: Incoming,
    buf: String,
}

impl Stream {
    async fn open(server: &Server) -> Self {
        let response = server.open(Method::GET, "/api/events").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["cache-control"], "no-store");
        // The head arrives after the server subscribed: events sent from now
        // on reach this stream, after the snapshot it opens with.
        let mut stream = Self {
            body: response.into_body(),
            buf: String::new(),
        };
        match stream.next().await {
            Some(Message::Event { event, data }) => {
                assert_eq!(event, "snapshot");
                assert!(data.get("stack").is_some(), "{data}");
            }
            other => panic!("the stream opens with a snapshot, not {other:?}"),
        }
        stream
    }

    /// The next block, or `None` when the stream ended.
    async fn next(&mut self) -> Option<Message> {
        within(async {
            loop {
                if let Some(end) = self.buf.find("\n\n") {
                    let block: String = self.buf.drain(..end + 2).collect();
                    return Some(parse(block.trim_end_matches('\n')));
                }
                match self.body.frame().await {
                    Some(frame) => {
                        if let Ok(data) = frame.unwrap().into_data() {
                            self.buf.push_str(std::str::from_utf8(&data).unwrap());
                        }
                    }
                    None => {
                        assert_eq!(self.buf, "", "the stream ended inside a block");
                        return None;
                    }
                }
            }
        })
        .await
    }

    async fn next_event(&mut self) -> (String, serde_json::Value) {
        match self.next().await {
            Some(Message::Event { event, data }) => (event, data),
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

fn parse(block: &str) -> Message {
    if let Some(comment) = block.strip_prefix(": ") {
        assert!(!comment.contains('\n'), "{block:?}");
        return Message::Comment(comment.to_owned());
    }
    let lines: Vec<&str> = block.split('\n').collect();
    let [event, data] = lines[..] else {
        panic!("expected two lines in {block:?}")
    };
    let event = event
        .strip_prefix("event: ")
        .unwrap_or_else(|| panic!("{block:?}"));
    let data = data
        .strip_prefix("data: ")
        .unwrap_or_else(|| panic!("{block:?}"));
    Message::Event {
        event: event.to_owned(),
        data: serde_json::from_str(data).unwrap(),
    }
}

fn event(n: u64, service: Option<&str>, kind: &str) -> Event {
    Event {
        time_unix_ms: 1_700_000_000_000 + n,
        service: service.map(str::to_owned),
        kind: kind.to_owned(),
        data: json!({ "n": n }),
    }
}

#[tokio::test]
async fn events_arrive_in_order_on_every_stream() {
    let server = Server::start(stack(vec![service("db", State::Ready)])).await;
    let mut first = Stream::open(&server).await;
    let mut second = Stream::open(&server).await;
    let sent = [
        event(1, Some("db"), "state"),
        event(2, Some("api"), "exit"),
        event(3, None, "hook.dropped"),
        event(4, Some("api"), "restart"),
    ];
    for e in &sent {
        server.events.send(e.clone()).unwrap();
    }

    for stream in [&mut first, &mut second] {
        for e in &sent {
            let (kind, data) = stream.next_event().await;
            assert_eq!(kind, e.kind);
            assert_eq!(data, serde_json::to_value(e).unwrap());
        }
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_stream_opens_with_the_stack_as_it_is() {
    let server = Server::start(stack(vec![service("db", State::Ready)])).await;
    let response = server.open(Method::GET, "/api/events").await;
    let mut stream = Stream {
        body: response.into_body(),
        buf: String::new(),
    };
    let Some(Message::Event { event, data }) = stream.next().await else {
        panic!("no first event")
    };
    assert_eq!(event, "snapshot");
    assert_eq!(data, server.get("/api/services").await.json());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_lagging_client_is_told_how_many_it_missed_and_continues() {
    let server = Server::start_with(stack(vec![]), 4, ServeOptions::default()).await;
    let mut stream = Stream::open(&server).await;

    // Ten events into a channel of four before the stream reads any: this
    // test runs on one thread, so the server cannot read in between.
    for n in 0..10 {
        server.events.send(event(n, Some("db"), "state")).unwrap();
    }

    let (kind, data) = stream.next_event().await;
    assert_eq!(kind, "lagged");
    assert_eq!(data["kind"], "lagged");
    assert_eq!(data["service"], serde_json::Value::Null);
    assert_eq!(data["data"], json!({ "dropped": 6 }));
    for n in 6..10 {
        let (kind, data) = stream.next_event().await;
        assert_eq!(kind, "state");
        assert_eq!(data["data"]["n"], n, "the newest four, in order");
    }
    server.events.send(event(10, Some("db"), "exit")).unwrap();
    let (kind, data) = stream.next_event().await;
    assert_eq!((kind.as_str(), &data["data"]["n"]), ("exit", &json!(10)));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_silent_stream_sends_keep_alive_comments() {
    let options = ServeOptions {
        keep_alive: Duration::from_millis(50),
        ..ServeOptions::default()
    };
    let server = Server::start_with(stack(vec![]), 16, options).await;
    let mut stream = Stream::open(&server).await;

    assert_eq!(
        stream.next().await,
        Some(Message::Comment("keep-alive".into()))
    );
    assert_eq!(
        stream.next().await,
        Some(Message::Comment("keep-alive".into()))
    );

    server.events.send(event(1, None, "state")).unwrap();
    // A keep-alive may already be on its way; the event follows it.
    loop {
        match stream.next().await {
            Some(Message::Comment(c)) => assert_eq!(c, "keep-alive"),
            Some(Message::Event { event, .. }) => break assert_eq!(event, "state"),
            None => panic!("the stream ended"),
        }
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_ends_an_open_stream_and_serve_returns() {
    let server = Server::start(stack(vec![service("db", State::Ready)])).await;
    let mut stream = Stream::open(&server).await;
    server.events.send(event(1, Some("db"), "state")).unwrap();
    assert_eq!(stream.next_event().await.0, "state");

    server.shutdown.cancel();

    assert_eq!(stream.next().await, None, "the stream ends cleanly");
    server.finished().await.unwrap();
}
