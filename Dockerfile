# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run in a small Debian runtime as a non-root user.
# scripts/check-dockerfile.sh replays this build stage's COPY lines and stub step in a temp dir and runs
# `cargo check` there, so a file the build needs but does not copy is caught without a container engine.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so that they are cached when only the sources change. Cargo.toml is a workspace
# (the gateway ".", its layers under crates/, and "bench"): cargo needs every member's manifest, and the
# targets it names, to load it. The sources are stubs here; only the gateway's binary is built, the bench
# member never is. build.rs checks the layers of crates/ (docs/architecture.md); on the stubs it has
# nothing to refuse.
COPY Cargo.toml Cargo.lock build.rs ./
COPY bench/Cargo.toml ./bench/Cargo.toml
COPY crates/model/Cargo.toml ./crates/model/Cargo.toml
COPY crates/storage/Cargo.toml ./crates/storage/Cargo.toml
COPY crates/cluster/Cargo.toml ./crates/cluster/Cargo.toml
COPY crates/app/Cargo.toml ./crates/app/Cargo.toml
COPY crates/front/Cargo.toml ./crates/front/Cargo.toml
RUN mkdir -p src bench/src/bin \
    && for c in model storage cluster app front; do mkdir -p crates/$c/src && echo "" > crates/$c/src/lib.rs; done \
    && echo "fn main() {}" > src/main.rs && echo "" > src/lib.rs \
    && echo "fn main() {}" > bench/src/main.rs && echo "fn main() {}" > bench/src/bin/raw_server.rs \
    && cargo build --release --locked -p realtime-gateway --bin realtime-gateway \
    && rm -rf src crates/model/src crates/storage/src crates/cluster/src crates/app/src crates/front/src
COPY src ./src
COPY crates ./crates
# The copies may be older than the stubs' build: touched, so that cargo builds them.
RUN touch src/main.rs src/lib.rs crates/*/src/lib.rs \
    && cargo build --release --locked -p realtime-gateway --bin realtime-gateway

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway \
    && mkdir -p /data/files && chown -R 10001:10001 /data
COPY --from=build /src/target/release/realtime-gateway /usr/local/bin/realtime-gateway
# Files go to /data/files (FILE_STORE_URL unset: files/ under the working directory); mount a volume
# there, shared by every node, or use an S3 bucket (FILE_STORE_URL=s3://...).
WORKDIR /data
USER 10001:10001
ENV HOST=0.0.0.0 PORT=8888 LOG_FORMAT=json
EXPOSE 8888
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8888/health || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/realtime-gateway"]
