# syntax=docker/dockerfile:1
# One image for `dbconn operator` and `dbconn pooler`: a static musl build on a distroless,
# non-root base.
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update \
    && apt-get install -y --no-install-recommends musl-tools=1.2.3-1 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin dbconn

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/dbconn /dbconn
USER 65532:65532
ENTRYPOINT ["/dbconn"]
