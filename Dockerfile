# syntax=docker/dockerfile:1
# Multi-stage: build with the Rust toolchain, run on a small non-root image.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
# The workspace's other members (the load tool, the test kit) must be
# present for cargo to read the workspace; only the service is built.
COPY crates crates
COPY proto proto
COPY migrations migrations
COPY supabase/seed.sql supabase/seed.sql
COPY src src
COPY benches benches
RUN cargo build --release --locked -p switchboard --bin switchboard

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/switchboard /usr/local/bin/switchboard
USER nonroot
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/switchboard"]
CMD ["serve"]
