//! Collectors a test runs itself: an OTLP trace collector and an OTLP
//! metrics collector on loopback ports (each keeps what it received), and a
//! log writer that keeps every line the subscriber writes.

use std::{
    io::Write,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            metrics_service_server::{MetricsService, MetricsServiceServer},
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        },
        trace::v1::{
            trace_service_server::{TraceService, TraceServiceServer},
            ExportTraceServiceRequest, ExportTraceServiceResponse,
        },
    },
    common::v1::KeyValue,
    trace::v1::Span,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{
    metadata::MetadataMap,
    transport::{server::Router, Server},
};

/// Every span a trace collector received, with its resource's attributes.
pub type ReceivedSpans = Arc<Mutex<Vec<(Vec<KeyValue>, Span)>>>;

/// Every metrics export a collector received, with the request's metadata.
pub type ReceivedMetrics = Arc<Mutex<Vec<(MetadataMap, ExportMetricsServiceRequest)>>>;

struct TraceCollector {
    received: ReceivedSpans,
}

#[tonic::async_trait]
impl TraceService for TraceCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.received.lock().unwrap_or_else(|e| e.into_inner());
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push((resource.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

struct MetricsCollector {
    received: ReceivedMetrics,
}

#[tonic::async_trait]
impl MetricsService for MetricsCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let metadata = request.metadata().clone();
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((metadata, request.into_inner()));
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Serves `router` on a free loopback port, on the current runtime.
async fn serve_on_loopback(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("collector bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("collector addr: {e}"));
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    addr
}

/// An OTLP/gRPC trace collector, served on the current runtime.
pub async fn trace_collector() -> (SocketAddr, ReceivedSpans) {
    let received = ReceivedSpans::default();
    let collector = TraceServiceServer::new(TraceCollector {
        received: received.clone(),
    });
    let addr = serve_on_loopback(Server::builder().add_service(collector)).await;
    (addr, received)
}

/// An OTLP/gRPC metrics collector, served on the current runtime.
pub async fn metrics_collector() -> (SocketAddr, ReceivedMetrics) {
    let received = ReceivedMetrics::default();
    let collector = MetricsServiceServer::new(MetricsCollector {
        received: received.clone(),
    });
    let addr = serve_on_loopback(Server::builder().add_service(collector)).await;
    (addr, received)
}

/// The log, as a subscriber writes it (a `MakeWriter` can clone it).
#[derive(Clone, Default)]
pub struct LogSink(Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogSink {
    /// Every line, parsed as JSON (panics on one that is not).
    pub fn lines(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"))
            })
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}
