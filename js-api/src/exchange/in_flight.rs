//! The exchanges an isolate has taken and not yet finished ([`InFlight`]): the CPU time and
//! outbound fetches charged to each, their request bodies, and what each is still owed, a
//! response head or the end of its body ([`Replies`]), which another thread can settle when
//! the isolate's cannot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::body::{self, StreamBody, StreamSender};
use super::{Failure, Reply, RequestBody, RequestId, SUBREQUEST_LIMIT_MESSAGE};

/// Exchanges taken by the isolate and not yet finished, with the CPU time charged to each.
#[derive(Default)]
pub struct InFlight {
    next_id: u32,
    pub(super) entries: HashMap<u32, Entry>,
    /// What the entries are still owed (a response head, or the end of a streamed body),
    /// apart from the entries so that another thread can settle it ([`Self::replies`]).
    pub(super) replies: Replies,
    /// Requests in flight at some moment since the last [`Self::charge`]: those left over
    /// from it and those taken since, finished or not.
    touched: usize,
}

pub(super) struct Entry {
    pub(super) request: RequestId,
    hops: u32,
    /// Outbound fetches charged to this request.
    subrequests: u32,
    /// CPU time of the isolate charged to this request so far.
    cpu: std::time::Duration,
    pub(super) body: Option<RequestBody>,
    pub(super) stream: Option<StreamSender>,
}

impl Drop for InFlight {
    /// Replies still owed are dropped with the isolate's state, as before they were shared:
    /// the host sees the isolate drop those requests.
    fn drop(&mut self) {
        let mut slots = self.replies.slots();
        slots.heads.clear();
        slots.streams.clear();
    }
}

/// What an ended exchange was still owed (see [`InFlight::end`]).
pub(super) struct Owed {
    /// The slot of a response head not yet sent.
    pub(super) reply: Option<oneshot::Sender<Reply>>,
    /// The switch that fails a body still streaming.
    pub(super) abort: Option<oneshot::Sender<String>>,
}

/// What the requests an isolate has taken and not yet finished are owed (by in-flight id),
/// shared with whoever must end them when the isolate's thread cannot: an isolate whose JS
/// goes on after termination ([`Replies::fail_all`]).
#[derive(Clone, Default)]
pub struct Replies(Arc<Mutex<ReplySlots>>);

#[derive(Default)]
struct ReplySlots {
    /// The slot each response head goes into.
    heads: HashMap<u32, (RequestId, oneshot::Sender<Reply>)>,
    /// How to abort each response body still streaming.
    streams: HashMap<u32, (RequestId, oneshot::Sender<String>)>,
}

impl Replies {
    fn slots(&self) -> std::sync::MutexGuard<'_, ReplySlots> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn take(&self, id: u32) -> Option<oneshot::Sender<Reply>> {
        self.slots().heads.remove(&id).map(|(_, reply)| reply)
    }

    /// The requests still owed a response head or the end of their body.
    pub fn owed(&self) -> Vec<RequestId> {
        let slots = self.slots();
        slots
            .heads
            .values()
            .map(|(request, _)| *request)
            .chain(slots.streams.values().map(|(request, _)| *request))
            .collect()
    }

    /// Answers every request still owed a response head with `failure` and aborts every
    /// response body still streaming, from any thread; returns those requests. The isolate's
    /// later attempts to answer or write to them fail quietly.
    pub fn fail_all(&self, failure: &Failure) -> Vec<RequestId> {
        let (heads, streams) = {
            let mut slots = self.slots();
            (std::mem::take(&mut slots.heads), std::mem::take(&mut slots.streams))
        };
        let mut ended = Vec::with_capacity(heads.len() + streams.len());
        for (request, reply) in heads.into_values() {
            let _ = reply.send(Reply::Failed(failure.clone()));
            ended.push(request);
        }
        for (request, abort) in streams.into_values() {
            let _ = abort.send(failure.detail.clone());
            ended.push(request);
        }
        ended
    }
}

impl InFlight {
    pub(super) fn insert(
        &mut self,
        exchange_id: (RequestId, u32),
        body: Option<RequestBody>,
        reply: oneshot::Sender<Reply>,
    ) -> u32 {
        self.next_id = self.next_id.wrapping_add(1);
        let (request, hops) = exchange_id;
        let entry = Entry { request, hops, subrequests: 0, cpu: std::time::Duration::ZERO, body, stream: None };
        self.entries.insert(self.next_id, entry);
        self.replies.slots().heads.insert(self.next_id, (request, reply));
        self.touched += 1;
        self.next_id
    }

    /// Ends exchange `id`: its entry, and what it was still owed. Dropped unused, a reply
    /// slot tells the host the isolate dropped the request and an abort switch lets a body
    /// still streaming fail.
    pub(super) fn end(&mut self, id: u32) -> Option<(Entry, Owed)> {
        let entry = self.entries.remove(&id)?;
        let mut slots = self.replies.slots();
        let reply = slots.heads.remove(&id).map(|(_, reply)| reply);
        let abort = slots.streams.remove(&id).map(|(_, abort)| abort);
        Some((entry, Owed { reply, abort }))
    }

    /// Ends an exchange whose streamed body the function closed: the body ends cleanly.
    pub(super) fn close(&mut self, id: u32) {
        if let Some(stream) = self.end(id).and_then(|(e, _)| e.stream) {
            stream.close();
        }
    }

    /// Opens the streamed body of exchange `id` (whose head is being sent).
    pub(super) fn start_stream(&mut self, id: u32) -> Option<StreamBody> {
        let entry = self.entries.get_mut(&id)?;
        let (sender, body, abort) = body::stream();
        entry.stream = Some(sender);
        self.replies.slots().streams.insert(id, (entry.request, abort));
        Some(body)
    }

    /// The answer slots, for another thread (see [`Replies`]).
    pub fn replies(&self) -> Replies {
        self.replies.clone()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The hop count an outbound request made now carries: one more than the most any
    /// request in flight came with. (Without per-request async context, concurrent requests
    /// share the highest count: a loop is never missed, a fetch may be counted high.)
    pub fn outbound_hops(&self) -> u32 {
        self.entries.values().map(|e| e.hops).max().unwrap_or(0) + 1
    }

    /// Charges an outbound fetch made now to the request in flight that has made the fewest.
    /// Without per-request async context a fetch cannot be told apart between concurrent
    /// requests; charged this way, the isolate's requests together make at most `limit` each,
    /// and none is refused while another still has room (charging every request in flight
    /// for each fetch refused a proxy's one fetch per request once 50 were in flight).
    /// Refused once every request in flight has made `limit`.
    pub fn count_subrequest(&mut self, limit: u32) -> Result<(), String> {
        let Some(least) = self.entries.values_mut().min_by_key(|e| e.subrequests) else {
            return Ok(());
        };
        if least.subrequests >= limit {
            return Err(if self.entries.len() == 1 {
                format!(
                    "{SUBREQUEST_LIMIT_MESSAGE}: this request already made {limit} outbound fetches, its limit \
                     (limits.subrequests)"
                )
            } else {
                format!(
                    "{SUBREQUEST_LIMIT_MESSAGE}: the {} requests in flight in this isolate already made {limit} \
                     outbound fetches each, their limit (limits.subrequests)",
                    self.entries.len()
                )
            });
        }
        least.subrequests += 1;
        Ok(())
    }

    /// The most CPU time charged to any request in flight.
    pub fn max_charged(&self) -> std::time::Duration {
        self.entries.values().map(|e| e.cpu).max().unwrap_or_default()
    }

    /// Charges `cpu`, used since the last charge, in equal parts to every request in flight at
    /// some moment of that time: the shares of those that have finished since go nowhere.
    /// False when no request was in flight at all (the CPU is background work).
    pub fn charge(&mut self, cpu: std::time::Duration) -> bool {
        let n = u32::try_from(self.touched).unwrap_or(u32::MAX);
        self.touched = self.entries.len();
        if n == 0 {
            return false;
        }
        let share = cpu / n;
        self.entries.values_mut().for_each(|e| e.cpu += share);
        true
    }

    /// The requests in flight.
    pub fn requests(&self) -> Vec<RequestId> {
        self.entries.values().map(|e| e.request).collect()
    }

    /// Forgets requests nobody waits for any more: the client left, or the host gave up on
    /// them (wall time). The function's later calls for them fail quietly.
    pub fn forget_abandoned(&mut self) {
        let mut replies = self.replies.slots();
        self.entries.retain(|id, e| {
            let keep = match (replies.heads.get(id), &e.stream) {
                (Some((_, reply)), _) => !reply.is_closed(),
                (None, Some(stream)) => !stream.chunks.is_closed(),
                (None, None) => true,
            };
            if !keep {
                replies.heads.remove(id);
                replies.streams.remove(id);
            }
            keep
        });
    }

    /// Fails every exchange still open: used when the isolate dies under them.
    pub fn fail_all(&mut self, failure: &Failure) {
        self.replies.fail_all(failure);
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll};
    use std::time::Duration;

    use bytes::Bytes;

    use super::super::tests::failed;
    use super::super::{FailureKind, StreamAborted};
    use super::body::RESPONSE_CHANNEL_CHUNKS;
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn take(f: &mut InFlight, n: u64) -> u32 {
        f.insert((RequestId(n), 0), None, oneshot::channel().0)
    }

    fn charged(f: &InFlight) -> Vec<Duration> {
        let mut c: Vec<_> = f.entries.values().map(|e| e.cpu).collect();
        c.sort();
        c
    }

    #[test]
    fn bug_cpu_of_requests_finished_within_a_stretch_went_to_those_left() {
        // One stretch takes and answers three requests and takes a fourth: the fourth is
        // charged a quarter of the stretch, not all of it.
        let mut f = InFlight::default();
        for n in 0..3 {
            let id = take(&mut f, n);
            f.end(id);
        }
        take(&mut f, 3);
        assert!(f.charge(8 * MS));
        assert_eq!(charged(&f), [2 * MS]);
    }

    #[test]
    fn bug_one_fetch_per_request_was_refused_with_fifty_requests_in_flight() {
        let mut f = InFlight::default();
        for n in 0..64 {
            take(&mut f, n);
        }
        for _ in 0..64 {
            f.count_subrequest(50).expect("one fetch per request is far below the limit");
        }
        assert!(f.entries.values().all(|e| e.subrequests == 1));
    }

    #[test]
    fn subrequests_are_refused_once_every_request_in_flight_made_its_limit() {
        let mut f = InFlight::default();
        take(&mut f, 0);
        for _ in 0..3 {
            f.count_subrequest(3).unwrap();
        }
        let e = f.count_subrequest(3).unwrap_err();
        assert!(e.starts_with(SUBREQUEST_LIMIT_MESSAGE) && e.contains("this request already made 3"), "{e}");
        take(&mut f, 1);
        f.count_subrequest(3).expect("the new request has room");
        f.count_subrequest(3).unwrap();
        f.count_subrequest(3).unwrap();
        let e = f.count_subrequest(3).unwrap_err();
        assert!(e.contains("the 2 requests in flight"), "{e}");
    }

    #[test]
    fn a_stretch_with_no_request_in_flight_is_background() {
        let mut f = InFlight::default();
        assert!(!f.charge(5 * MS));
        let id = take(&mut f, 0);
        f.end(id);
        assert!(f.charge(5 * MS), "a request answered within the stretch was in flight");
        assert!(!f.charge(5 * MS), "after it, nothing was");
    }

    #[test]
    fn requests_left_in_flight_share_later_stretches() {
        let mut f = InFlight::default();
        take(&mut f, 0);
        take(&mut f, 1);
        assert!(f.charge(4 * MS));
        assert!(f.charge(4 * MS));
        assert_eq!(charged(&f), [4 * MS, 4 * MS]);
    }

    #[test]
    fn requests_owed_an_answer_are_failed_from_another_thread_and_only_those() {
        let mut f = InFlight::default();
        let (a, mut answer_a) = oneshot::channel();
        let (b, mut answer_b) = oneshot::channel();
        let first = f.insert((RequestId(1), 0), None, a);
        f.insert((RequestId(2), 0), None, b);
        // The first got its head (a streamed response): nothing is owed to it any more.
        drop(f.replies.take(first));
        let replies = f.replies();
        assert_eq!(replies.owed(), [RequestId(2)]);
        let failure = Failure { kind: FailureKind::MemoryLimitExceeded, detail: "stuck".into() };
        let owed = std::thread::spawn(move || replies.fail_all(&failure)).join().unwrap();
        assert_eq!(owed, [RequestId(2)]);
        assert_eq!(failed(&mut answer_b), Some(FailureKind::MemoryLimitExceeded));
        assert!(failed(&mut answer_a).is_none());
        assert_eq!(f.len(), 2, "the isolate still holds its entries, to finish or fail them itself");
    }

    fn poll(body: &mut StreamBody) -> Poll<Option<Result<Bytes, StreamAborted>>> {
        body.poll_chunk(&mut Context::from_waker(std::task::Waker::noop()))
    }

    /// Exchange `n` in flight with its head sent and its body streaming.
    fn streaming(f: &mut InFlight, n: u64) -> (u32, StreamBody) {
        let id = take(f, n);
        drop(f.replies.take(id));
        (id, f.start_stream(id).unwrap())
    }

    fn send(f: &InFlight, id: u32, chunk: &'static str) {
        f.entries[&id].stream.as_ref().unwrap().chunks.try_send(Ok(Bytes::from(chunk))).unwrap();
    }

    #[test]
    fn a_streamed_body_the_function_closed_ends_cleanly_after_its_chunks() {
        let mut f = InFlight::default();
        let (id, mut body) = streaming(&mut f, 1);
        send(&f, id, "a");
        f.close(id);
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Ok(b))) if b == "a"));
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
    }

    #[test]
    fn bug_a_streamed_body_dropped_unclosed_ended_as_if_complete() {
        // The isolate ended (here: its state dropped) with the stream still open.
        let mut f = InFlight::default();
        let (id, mut body) = streaming(&mut f, 1);
        send(&f, id, "a");
        drop(f);
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Ok(_)))));
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Err(_)))), "a truncated body must fail, not end");
    }

    #[test]
    fn a_streamed_body_is_aborted_from_another_thread_even_with_its_channel_full() {
        let mut f = InFlight::default();
        let (id, mut body) = streaming(&mut f, 7);
        for _ in 0..RESPONSE_CHANNEL_CHUNKS {
            send(&f, id, "x");
        }
        let replies = f.replies();
        assert_eq!(replies.owed(), [RequestId(7)]);
        let failure = Failure { kind: FailureKind::CpuLimitExceeded, detail: "stuck".into() };
        let ended = std::thread::spawn(move || replies.fail_all(&failure)).join().unwrap();
        assert_eq!(ended, [RequestId(7)]);
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Err(StreamAborted(why)))) if why == "stuck"));
    }
}
