//! The floor every case of `benches/load/run.sh` is measured against: a
//! tonic 0.14 server with no layers and no auth, as a service written in an
//! afternoon would be. It serves `grpc.health.v1` (tonic-health, as
//! switchboard does), reflection (so the load tool finds the methods) and
//! `switchboard.v1.AgentService/ResolveAgent`, which decodes the request as
//! any tonic service does and answers a fixed encoded message: switchboard's
//! own answer to the same call, fetched once at start. Every other method is
//! UNIMPLEMENTED.
//!
//! Shared by the `bare_server` example (`benches/bare/main.rs`) and the
//! allocation phase of `benches/resolve.rs`.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{BufMut, Bytes};
use prost::Message;
use switchboard::pb;
use tonic::{
    body::Body,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    server::{Grpc, NamedService, UnaryService},
    transport::{server::TcpIncoming, Server},
    Request, Response, Status,
};

/// Serves the bare server on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, answer: Bytes) -> Result<(), String> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| e.to_string())?;
    // TCP_NODELAY as switchboard sets it: without it every answer waits
    // for the peer's delayed ACK, and the floor would measure Nagle.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(FixedAgentService { answer })
        .serve_with_incoming(incoming)
        .await
        .map_err(|e| e.to_string())
}

/// `AgentService` as a bare server: ResolveAgent answers `answer`.
#[derive(Clone)]
struct FixedAgentService {
    answer: Bytes,
}

impl NamedService for FixedAgentService {
    const NAME: &'static str = "switchboard.v1.AgentService";
}

type BoxedCall = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl tower::Service<http::Request<Body>> for FixedAgentService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxedCall;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    // What tonic's generated code does: match the path, box the call.
    fn call(&mut self, request: http::Request<Body>) -> BoxedCall {
        if request.uri().path() == "/switchboard.v1.AgentService/ResolveAgent" {
            let answer = Answer(self.answer.clone());
            Box::pin(async move { Ok(Grpc::new(AnswerCodec).unary(answer, request).await) })
        } else {
            Box::pin(async { Ok(Status::unimplemented("not in the bare server").into_http()) })
        }
    }
}

struct Answer(Bytes);

impl UnaryService<pb::ResolveAgentRequest> for Answer {
    type Response = Bytes;
    type Future = std::future::Ready<Result<Response<Bytes>, Status>>;

    fn call(&mut self, _request: Request<pb::ResolveAgentRequest>) -> Self::Future {
        std::future::ready(Ok(Response::new(self.0.clone())))
    }
}

/// Requests decoded with prost, answers written as the stored bytes.
#[derive(Clone, Copy, Default)]
struct AnswerCodec;

impl Codec for AnswerCodec {
    type Encode = Bytes;
    type Decode = pb::ResolveAgentRequest;
    type Encoder = AnswerCodec;
    type Decoder = AnswerCodec;

    fn encoder(&mut self) -> AnswerCodec {
        AnswerCodec
    }

    fn decoder(&mut self) -> AnswerCodec {
        AnswerCodec
    }
}

impl Encoder for AnswerCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for AnswerCodec {
    type Item = pb::ResolveAgentRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        pb::ResolveAgentRequest::decode(src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }
}
