//! Finds the method by server reflection (v1, else v1alpha), as ghz does,
//! and turns the JSON requests into protobuf bytes with the server's own
//! descriptors.

use std::collections::HashSet;

use bytes::Bytes;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use prost_types::FileDescriptorProto;
use serde_json::Value;
use tonic::{transport::Channel, Code};
use tonic_reflection::pb::{v1, v1alpha};

use super::{args::Plan, LoadError};

/// The method to call and how to encode its input.
pub struct Method {
    /// `/package.Service/Method`.
    pub path: String,
    pub input: MessageDescriptor,
}

impl Method {
    /// Each JSON request as protobuf bytes; unknown fields and wrong types
    /// are errors that name the request.
    pub fn encode_all(&self, data: &[Value]) -> Result<Vec<Bytes>, LoadError> {
        data.iter()
            .enumerate()
            .map(|(i, json)| {
                let message =
                    DynamicMessage::deserialize(self.input.clone(), json).map_err(|e| {
                        LoadError::Data(format!(
                            "request #{} is not a valid {}: {e}",
                            i + 1,
                            self.input.full_name()
                        ))
                    })?;
                Ok(Bytes::from(message.encode_to_vec()))
            })
            .collect()
    }
}

pub async fn connect(plan: &Plan) -> Result<Channel, LoadError> {
    let failed = |reason: String| LoadError::Connect {
        host: plan.host.clone(),
        reason,
    };
    let endpoint = Channel::from_shared(plan.endpoint.clone())
        .map_err(|e| failed(e.to_string()))?
        .connect_timeout(plan.connect_timeout)
        .tcp_nodelay(true);
    endpoint
        .connect()
        .await
        .map_err(|e| failed(error_chain(&e)))
}

/// The innermost cause is usually the useful one ("Connection refused").
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

pub async fn resolve_method(plan: &Plan) -> Result<Method, LoadError> {
    let channel = connect(plan).await?;
    let files = tokio::time::timeout(plan.connect_timeout, fetch_files(channel, plan))
        .await
        .map_err(|_| LoadError::Reflection("the server did not answer in time".into()))??;
    let mut pool = DescriptorPool::global();
    let known: HashSet<String> = pool.files().map(|f| f.name().to_owned()).collect();
    pool.add_file_descriptor_protos(files.into_iter().filter(|f| !known.contains(f.name())))
        .map_err(|e| {
            LoadError::Reflection(format!("the server's descriptors do not build: {e}"))
        })?;
    let service = pool.get_service_by_name(&plan.service).ok_or_else(|| {
        LoadError::Reflection(format!("the server has no service {}", plan.service))
    })?;
    let method = service
        .methods()
        .find(|m| m.name() == plan.method)
        .ok_or_else(|| {
            let names: Vec<String> = service.methods().map(|m| m.name().to_owned()).collect();
            LoadError::Reflection(format!(
                "{} has no method {} (it has: {})",
                plan.service,
                plan.method,
                names.join(", ")
            ))
        })?;
    if method.is_client_streaming() || method.is_server_streaming() {
        return Err(LoadError::Usage(format!(
            "{}.{} is a streaming method; switchboard-bench calls unary methods",
            plan.service, plan.method
        )));
    }
    Ok(Method {
        path: format!("/{}/{}", plan.service, plan.method),
        input: method.input(),
    })
}

/// The file defining the service and every file it imports.
async fn fetch_files(channel: Channel, plan: &Plan) -> Result<Vec<FileDescriptorProto>, LoadError> {
    let mut reflection = Reflection::new(channel);
    let mut files: Vec<FileDescriptorProto> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut wanted: Vec<String> = Vec::new();
    for file in reflection.file_containing_symbol(&plan.service).await? {
        wanted.extend(file.dependency.iter().cloned());
        if seen.insert(file.name().to_owned()) {
            files.push(file);
        }
    }
    let builtin: HashSet<String> = DescriptorPool::global()
        .files()
        .map(|f| f.name().to_owned())
        .collect();
    while let Some(name) = wanted.pop() {
        if seen.contains(&name) || builtin.contains(&name) {
            continue;
        }
        for file in reflection.file_by_filename(&name).await? {
            wanted.extend(file.dependency.iter().cloned());
            if seen.insert(file.name().to_owned()) {
                files.push(file);
            }
        }
    }
    Ok(files)
}

/// One reflection question over one version of the protocol: v1 and
/// v1alpha have the same messages in different packages.
macro_rules! ask_version {
    ($version:ident, $channel:expr, $ask:expr) => {{
        use $version::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest, ServerReflectionResponse,
        };
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(match $ask {
                Ask::Symbol(s) => MessageRequest::FileContainingSymbol(s.clone()),
                Ask::File(f) => MessageRequest::FileByFilename(f.clone()),
            }),
        };
        let mut client = ServerReflectionClient::new($channel);
        let mut stream = client
            .server_reflection_info(tokio_stream::once(request))
            .await?
            .into_inner();
        match stream.message().await? {
            Some(ServerReflectionResponse {
                message_response: Some(MessageResponse::FileDescriptorResponse(files)),
                ..
            }) => Ok(files.file_descriptor_proto),
            Some(ServerReflectionResponse {
                message_response: Some(MessageResponse::ErrorResponse(error)),
                ..
            }) => Err(tonic::Status::new(
                Code::from_i32(error.error_code),
                error.error_message,
            )),
            _ => Err(tonic::Status::internal("an empty reflection answer")),
        }
    }};
}

/// A reflection client that falls back from v1 to v1alpha.
struct Reflection {
    channel: Channel,
    use_alpha: bool,
}

enum Ask {
    Symbol(String),
    File(String),
}

impl Reflection {
    fn new(channel: Channel) -> Self {
        Reflection {
            channel,
            use_alpha: false,
        }
    }

    async fn file_containing_symbol(
        &mut self,
        symbol: &str,
    ) -> Result<Vec<FileDescriptorProto>, LoadError> {
        self.ask(Ask::Symbol(symbol.to_owned())).await
    }

    async fn file_by_filename(
        &mut self,
        name: &str,
    ) -> Result<Vec<FileDescriptorProto>, LoadError> {
        self.ask(Ask::File(name.to_owned())).await
    }

    async fn ask(&mut self, ask: Ask) -> Result<Vec<FileDescriptorProto>, LoadError> {
        if !self.use_alpha {
            match self.ask_v1(&ask).await {
                Err(status) if status.code() == Code::Unimplemented => self.use_alpha = true,
                other => return answer(other, &ask),
            }
        }
        let result = self.ask_v1alpha(&ask).await;
        answer(result, &ask)
    }

    async fn ask_v1(&self, ask: &Ask) -> Result<Vec<Vec<u8>>, tonic::Status> {
        ask_version!(v1, self.channel.clone(), ask)
    }

    async fn ask_v1alpha(&self, ask: &Ask) -> Result<Vec<Vec<u8>>, tonic::Status> {
        ask_version!(v1alpha, self.channel.clone(), ask)
    }
}

fn answer(
    result: Result<Vec<Vec<u8>>, tonic::Status>,
    ask: &Ask,
) -> Result<Vec<FileDescriptorProto>, LoadError> {
    let what = match ask {
        Ask::Symbol(s) => format!("the server has no service {s}"),
        Ask::File(f) => format!("the server does not serve {f}"),
    };
    match result {
        Ok(encoded) => encoded
            .iter()
            .map(|bytes| {
                FileDescriptorProto::decode(bytes.as_slice()).map_err(|e| {
                    LoadError::Reflection(format!("a file descriptor does not decode: {e}"))
                })
            })
            .collect(),
        Err(status) if status.code() == Code::NotFound => Err(LoadError::Reflection(what)),
        Err(status) if status.code() == Code::Unimplemented => Err(LoadError::Reflection(
            "the server does not offer gRPC reflection (v1 or v1alpha)".into(),
        )),
        Err(status) => Err(LoadError::Reflection(format!(
            "{:?}: {}",
            status.code(),
            status.message()
        ))),
    }
}
