//! Drives the calls: `concurrency` workers spread over `connections`
//! HTTP/2 connections, closed loop by default, paced open loop with `--rps`.
//!
//! Open loop: a pacer thread (not the tokio timer, whose 1 ms wheel would
//! add up to a millisecond of its own lateness) releases one permit per due
//! instant; the worker that takes permit k counts the call's latency from
//! instant k, so time a call waited for a free worker is in its latency.

use std::{
    collections::{BTreeMap, HashMap},
    str::FromStr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::uri::PathAndQuery;
use tokio::sync::Semaphore;
use tonic::{
    metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap},
    transport::Channel,
    Code, Status,
};

use super::{
    args::{Plan, Stop},
    codec::RawCodec,
    reflect::{connect, error_chain},
    report::Report,
    LoadError,
};

/// Distinct error messages kept; more are counted under one line.
const MAX_ERROR_KINDS: usize = 1_000;
const OTHER_ERRORS: &str = "(other errors)";

/// What one worker saw.
pub struct Recorder {
    /// Latencies of OK calls, nanoseconds.
    pub ok: Histogram<u64>,
    pub count: u64,
    pub sum_ns: u128,
    pub fastest_ns: u64,
    pub slowest_ns: u64,
    pub statuses: BTreeMap<i32, u64>,
    pub errors: HashMap<String, u64>,
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            // 3 significant figures, auto-resizing: memory stays bounded
            // however long the run.
            ok: Histogram::new(3).expect("3 significant figures is a valid precision"),
            count: 0,
            sum_ns: 0,
            fastest_ns: u64::MAX,
            slowest_ns: 0,
            statuses: BTreeMap::new(),
            errors: HashMap::new(),
        }
    }

    pub fn record(&mut self, latency: Duration, outcome: Result<(), Status>) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.count += 1;
        self.sum_ns += u128::from(ns);
        self.fastest_ns = self.fastest_ns.min(ns);
        self.slowest_ns = self.slowest_ns.max(ns);
        let code = match &outcome {
            Ok(()) => Code::Ok,
            Err(status) => status.code(),
        };
        *self.statuses.entry(code as i32).or_default() += 1;
        match outcome {
            Ok(()) => {
                // Auto-resizing: grows to the slowest value seen.
                if self.ok.record(ns).is_err() {
                    self.ok.saturating_record(ns);
                }
            }
            Err(status) => self.error_n(ghz_error_text(&status), 1),
        }
    }

    pub fn merge(&mut self, other: Recorder) {
        // Both auto-resize, so adding cannot fail on range.
        let _ = self.ok.add(&other.ok);
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        self.fastest_ns = self.fastest_ns.min(other.fastest_ns);
        self.slowest_ns = self.slowest_ns.max(other.slowest_ns);
        for (code, n) in other.statuses {
            *self.statuses.entry(code).or_default() += n;
        }
        for (text, n) in other.errors {
            self.error_n(text, n);
        }
    }

    fn error_n(&mut self, text: String, n: u64) {
        if self.errors.len() < MAX_ERROR_KINDS || self.errors.contains_key(&text) {
            *self.errors.entry(text).or_default() += n;
        } else {
            *self.errors.entry(OTHER_ERRORS.into()).or_default() += n;
        }
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// Go's `status.Error(...).Error()`, which is what ghz counts.
pub fn ghz_error_text(status: &Status) -> String {
    format!(
        "rpc error: code = {} desc = {}",
        super::report::StatusName::of(status.code()).0,
        status.message()
    )
}

struct Work {
    path: PathAndQuery,
    requests: Vec<Bytes>,
    metadata: MetadataMap,
    timeout: Duration,
    stop: Stop,
    start: Instant,
    stop_at: Option<Instant>,
    next: AtomicU64,
    stopped: AtomicBool,
    workers: usize,
    /// Open loop: one permit per due call.
    pacer: Option<(Arc<Semaphore>, f64)>,
}

impl Work {
    /// The instant call `k` was due, open loop.
    fn due(&self, k: u64, rps: f64) -> Instant {
        self.start + Duration::from_secs_f64(k as f64 / rps)
    }
}

pub async fn run(plan: &Plan, path: &str, requests: Vec<Bytes>) -> Result<Report, LoadError> {
    let path = PathAndQuery::from_str(path)
        .map_err(|e| LoadError::Usage(format!("bad method path {path}: {e}")))?;
    let mut metadata = MetadataMap::new();
    for (key, value) in &plan.metadata {
        let key = AsciiMetadataKey::from_str(key)
            .map_err(|_| LoadError::Usage(format!("bad metadata key {key:?}")))?;
        let value = AsciiMetadataValue::try_from(value.as_str())
            .map_err(|_| LoadError::Usage(format!("bad metadata value for {key:?}")))?;
        metadata.append(key, value);
    }
    let mut channels = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        channels.push(connect(plan).await?);
    }

    let date = chrono::Utc::now();
    let start = Instant::now();
    let stop_at = match plan.stop {
        Stop::Duration(d) => Some(start + d),
        Stop::Total(_) => None,
    };
    let pacer = plan
        .rps
        .map(|rps| (Arc::new(Semaphore::new(0)), rps as f64));
    let work = Arc::new(Work {
        path,
        requests,
        metadata,
        timeout: plan.timeout,
        stop: plan.stop,
        start,
        stop_at,
        next: AtomicU64::new(0),
        stopped: AtomicBool::new(false),
        workers: plan.concurrency,
        pacer: pacer.clone(),
    });
    let cancelled = Arc::new(AtomicBool::new(false));
    let watcher = {
        let work = work.clone();
        let cancelled = cancelled.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                cancelled.store(true, Ordering::SeqCst);
                work.stopped.store(true, Ordering::SeqCst);
                if let Some((permits, _)) = &work.pacer {
                    permits.close();
                }
            }
        })
    };
    let pacer_thread = pacer.map(|(permits, rps)| {
        let work = work.clone();
        std::thread::spawn(move || pace(&work, &permits, rps))
    });

    let workers: Vec<_> = (0..plan.concurrency)
        .map(|i| {
            let channel = channels[i % channels.len()].clone();
            tokio::spawn(worker(work.clone(), channel))
        })
        .collect();
    let mut recorder = Recorder::new();
    for handle in workers {
        match handle.await {
            Ok(seen) => recorder.merge(seen),
            Err(e) => {
                return Err(LoadError::Usage(format!("a load worker failed: {e}")));
            }
        }
    }
    let total = start.elapsed();
    work.stopped.store(true, Ordering::SeqCst);
    if let Some((permits, _)) = &work.pacer {
        permits.close();
    }
    if let Some(thread) = pacer_thread {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    watcher.abort();
    let end_reason = if cancelled.load(Ordering::SeqCst) {
        "cancel"
    } else if stop_at.is_some() {
        "timeout"
    } else {
        "normal"
    };
    Ok(Report::new(plan, date, end_reason, total, recorder))
}

/// Releases a permit at each due instant until the run ends.
fn pace(work: &Work, permits: &Semaphore, rps: f64) {
    let mut released: u64 = 0;
    loop {
        if work.stopped.load(Ordering::Relaxed) || permits.is_closed() {
            return;
        }
        let elapsed = work.start.elapsed().as_secs_f64();
        // Calls 0..=due_now are due.
        let mut due_now = (elapsed * rps).floor() as u64 + 1;
        if let Stop::Total(n) = work.stop {
            due_now = due_now.min(n);
        }
        if let Some(stop_at) = work.stop_at {
            // Nothing due at or after the end.
            let last = ((stop_at - work.start).as_secs_f64() * rps).ceil() as u64;
            due_now = due_now.min(last);
        }
        if due_now > released {
            permits.add_permits(usize::try_from(due_now - released).unwrap_or(usize::MAX));
            released = due_now;
        }
        let finished = match work.stop {
            Stop::Total(n) => released >= n,
            Stop::Duration(_) => work.stop_at.is_some_and(|at| Instant::now() >= at),
        };
        if finished {
            // Wake every worker still waiting: each finds nothing left to
            // do (k past the total, or due after the end) and stops.
            permits.add_permits(work.workers);
            return;
        }
        let next_due = work.due(released, rps);
        let now = Instant::now();
        if next_due > now {
            std::thread::sleep((next_due - now).min(Duration::from_millis(50)));
        }
    }
}

async fn worker(work: Arc<Work>, channel: Channel) -> Recorder {
    let mut grpc = tonic::client::Grpc::new(channel);
    let mut recorder = Recorder::new();
    loop {
        if work.stopped.load(Ordering::Relaxed) {
            break;
        }
        if let Some((permits, _)) = &work.pacer {
            match permits.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => break,
            }
        }
        let k = work.next.fetch_add(1, Ordering::Relaxed);
        if let Stop::Total(n) = work.stop {
            if k >= n {
                break;
            }
        }
        let begun = match &work.pacer {
            Some((_, rps)) => work.due(k, *rps),
            None => Instant::now(),
        };
        if work.stop_at.is_some_and(|at| begun >= at) {
            break;
        }
        let index = usize::try_from(k % work.requests.len() as u64).unwrap_or(0);
        let mut request = tonic::Request::new(work.requests[index].clone());
        *request.metadata_mut() = work.metadata.clone();
        request.set_timeout(work.timeout);
        // The client's own bound, a little past the server's deadline.
        let bound = work.timeout + Duration::from_millis(100);
        let outcome = match tokio::time::timeout(bound, call(&mut grpc, request, &work.path)).await
        {
            Ok(outcome) => outcome,
            Err(_) => Err(Status::deadline_exceeded("no answer within the timeout")),
        };
        recorder.record(begun.elapsed(), outcome);
    }
    recorder
}

async fn call(
    grpc: &mut tonic::client::Grpc<Channel>,
    request: tonic::Request<Bytes>,
    path: &PathAndQuery,
) -> Result<(), Status> {
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(error_chain(&e)))?;
    grpc.unary(request, path.clone(), RawCodec)
        .await
        .map(|_| ())
}
