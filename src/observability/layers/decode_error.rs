//! tonic answers INTERNAL when a request does not decode (bad bytes, or
//! nesting beyond prost's recursion limit). That is the client's fault: say
//! INVALID_ARGUMENT, as for every other bad input, before the call is
//! counted and logged.

use super::{OnResponse, GRPC_MESSAGE, GRPC_STATUS};

#[derive(Clone, Copy)]
pub struct DecodeErrorIsInvalidArgument;

impl OnResponse for DecodeErrorIsInvalidArgument {
    fn on_response<B>(&mut self, response: &mut http::Response<B>) {
        let headers = response.headers_mut();
        let is_internal = headers.get(&GRPC_STATUS).is_some_and(|v| v == "13");
        if !is_internal {
            return;
        }
        let is_decode = headers.get(&GRPC_MESSAGE).is_some_and(|v| {
            let v = v.as_bytes();
            v.starts_with(b"failed%20to%20decode") || v.starts_with(b"failed to decode")
        });
        if is_decode {
            headers.insert("grpc-status", http::HeaderValue::from_static("3"));
            headers.insert(
                "grpc-message",
                http::HeaderValue::from_static(
                    "request%20is%20not%20a%20valid%20message%20(malformed%20or%20nested%20too%20deeply)",
                ),
            );
        }
    }
}
