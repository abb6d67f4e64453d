//! `/api/events`: the event broadcast as a server-sent event stream.
//!
//! The stream is the response body itself: hyper polls it when it can write,
//! so a client that reads slowly falls behind on the broadcast channel (never
//! on the server's memory) and is told how many events it missed.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::{CancellationToken, ReusableBoxFuture, WaitForCancellationFutureOwned};

use crate::snapshot::{Event, Snapshot};

/// The `Content-Type` of the stream.
pub(crate) const CONTENT_TYPE: &str = "text/event-stream";

/// The comment sent when nothing else was, so proxies and clients see the
/// connection is alive.
const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

type Recv = (Result<Event, RecvError>, broadcast::Receiver<Event>);

/// One client's stream: events in order, `lagged` when it missed some, a
/// keep-alive comment every interval, and the end on shutdown.
pub(crate) struct EventStream {
    /// Sent before any event: the stack as it is when the client came.
    first: Option<Bytes>,
    // The pending `recv` owns the receiver and hands it back with the result.
    recv: ReusableBoxFuture<'static, Recv>,
    keep_alive: Interval,
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
    ended: bool,
}

impl EventStream {
    /// A stream that opens with `snapshot` (an `event: snapshot` whose data
    /// is the snapshot's JSON, so a client sees the stack at once instead of
    /// a silence that looks hung), then every event sent after this call.
    /// It subscribes before it reads the snapshot, so nothing falls between.
    pub(crate) fn new(
        events: &broadcast::Sender<Event>,
        snapshot: &watch::Receiver<Snapshot>,
        keep_alive: Duration,
        stop: CancellationToken,
    ) -> Self {
        let receiver = events.subscribe();
        let data = serde_json::to_string(&*snapshot.borrow()).unwrap_or_else(|_| "null".to_owned());
        let first = Bytes::from(format!("event: snapshot\ndata: {data}\n\n"));
        let mut interval = tokio::time::interval_at(Instant::now() + keep_alive, keep_alive);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            first: Some(first),
            recv: ReusableBoxFuture::new(recv(receiver)),
            keep_alive: interval,
            stop: Box::pin(stop.cancelled_owned()),
            ended: false,
        }
    }

    /// The next chunk to send, or `None` once the stream has ended.
    ///
    /// Shutdown comes first, then events, then the keep-alive.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self.stop.as_mut().poll(cx).is_ready() {
            self.ended = true;
            return Poll::Ready(None);
        }
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(first));
        }
        if let Poll::Ready((result, receiver)) = self.recv.poll(cx) {
            self.recv.set(recv(receiver));
            self.keep_alive.reset();
            return Poll::Ready(match result {
                Ok(event) => Some(frame(&event)),
                Err(RecvError::Lagged(dropped)) => Some(frame(&lagged(dropped))),
                // The server holds a sender, so this is only a safety net.
                Err(RecvError::Closed) => {
                    self.ended = true;
                    None
                }
            });
        }
        if self.keep_alive.poll_tick(cx).is_ready() {
            return Poll::Ready(Some(Bytes::from_static(KEEP_ALIVE)));
        }
        Poll::Pending
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.ended
    }
}

async fn recv(mut receiver: broadcast::Receiver<Event>) -> Recv {
    let result = receiver.recv().await;
    (result, receiver)
}

/// One event as `event: <kind>\ndata: <json>\n\n`.
pub(crate) fn frame(event: &Event) -> Bytes {
    // A line break in the kind would end the field early: replace it.
    let kind: String = event
        .kind
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    // serde_json escapes every control character inside strings, so the JSON
    // is one line; an Event holds nothing that fails to serialize.
    let data = serde_json::to_string(event).unwrap_or_else(|_| "null".to_owned());
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

/// The event a lagging client gets in place of the `dropped` ones it missed.
fn lagged(dropped: u64) -> Event {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Event {
        time_unix_ms: u64::try_from(now.as_millis()).unwrap_or(u64::MAX),
        service: None,
        kind: "lagged".to_owned(),
        data: serde_json::json!({ "dropped": dropped }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_one_event_line_and_one_data_line() {
        let event = Event {
            time_unix_ms: 7,
            service: Some("db".into()),
            kind: "state\r\nevent: forged".into(),
            data: serde_json::json!({ "text": "two\nlines" }),
        };
        let text = String::from_utf8(frame(&event).to_vec()).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines.len(), 4, "{text:?}");
        assert_eq!(lines[0], "event: state  event: forged");
        assert!(lines[1].starts_with("data: {"), "{text:?}");
        assert_eq!(&lines[2..], ["", ""]);
    }
}
