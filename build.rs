//! Compiles `proto/` with protox (a pure-Rust protoc), so a build needs no
//! system protoc, and emits the descriptor set that server reflection serves.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // tonic-prost-build records rerun-if-changed but never prints it.
    println!("cargo:rerun-if-changed=proto");
    // `sqlx::migrate!` embeds `migrations/` but does not tell cargo on stable
    // Rust: without this, a new migration file is not in the next build.
    println!("cargo:rerun-if-changed=migrations");

    let file_descriptors = protox::compile(["switchboard/v1/switchboard.proto"], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("switchboard_descriptor.bin"),
        prost::Message::encode_to_vec(&file_descriptors),
    )?;

    tonic_prost_build::configure()
        // Built on every call: a BTreeMap is one allocation and no hashing
        // for the dozen variables, and encodes in a stable order.
        .btree_map(".switchboard.v1.ResolveAgentResponse.variables")
        .btree_map(".switchboard.v1.CallDecision.variables")
        // Slices of the kept route when it is read (api/route_wire.rs): no
        // copy of a served version or of the hours on a memory hit.
        .bytes(".switchboard.v1.RouteData")
        // Written by hand (src/api/answer.rs): a memory hit passes the
        // cached agent and organization through in wire form.
        .extern_path(
            ".switchboard.v1.ResolveAgentResponse",
            "crate::api::answer::ResolveAgentResponse",
        )
        .build_client(true)
        .build_server(true)
        .compile_fds(file_descriptors)?;
    Ok(())
}
