# Multi-stage build: compile in the Rust image, run from a small distroless image as a non-root
# user. Not exercised by CI (no Docker engine runs there); keep it in step with Cargo.toml.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p websocket-sse-server

# glibc + libgcc only, no shell, no package manager; runs as uid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/websocket-sse-server /usr/local/bin/websocket-sse-server
ENV HOST=0.0.0.0 \
    PORT=8080
EXPOSE 8080
STOPSIGNAL SIGTERM
# The binary probes its own /health, so the image needs no curl.
HEALTHCHECK --interval=30s --timeout=10s --start-period=5s --retries=3 \
    CMD ["websocket-sse-server", "healthcheck"]
ENTRYPOINT ["websocket-sse-server"]
