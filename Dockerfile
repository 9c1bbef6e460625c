# syntax=docker/dockerfile:1
# One image for the operator and the injected sidecar: static musl builds on a distroless,
# non-root base. ENTRYPOINT is /dbconn and the subcommand the container's args (the chart
# passes `operator`); the webhook's sidecar runs /dbconn-pooler, the pooler alone (less of
# it resident in every pod than the whole /dbconn).
FROM rust:1.95-bookworm AS build
# musl-gcc: ring (rustls' crypto) compiles C and assembly for the musl target.
RUN rustup target add x86_64-unknown-linux-musl \
    && apt-get update \
    && apt-get install -y --no-install-recommends musl-tools=1.2.3-1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the build reads: the workspace manifest and lock file, the crate, the other
# workspace member (testbed: Cargo loads the whole workspace) and the bench target declared
# in Cargo.toml. rust-toolchain.toml stays out on purpose: the image's own 1.95 toolchain
# builds the crate, so rustup downloads no second toolchain.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY testbed ./testbed
COPY bench ./bench
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl --bin dbconn --bin dbconn-pooler \
    && cp target/x86_64-unknown-linux-musl/release/dbconn target/x86_64-unknown-linux-musl/release/dbconn-pooler /

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="dbconn" \
      org.opencontainers.image.description="Kubernetes operator and pooling sidecar that give workloads a least-privilege PostgreSQL connection" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /dbconn /dbconn
COPY --from=build /dbconn-pooler /dbconn-pooler
# Numeric, so the kubelet can check runAsNonRoot without reading /etc/passwd.
USER 65532:65532
ENTRYPOINT ["/dbconn"]
