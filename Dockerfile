# syntax=docker/dockerfile:1
# The regcred operator image: a release build on Debian, run from distroless
# as non-root (UID 65532). Build: docker build -t regcred .
FROM rust:1.95-bookworm AS build
# aws-lc-sys (the AWS SDK's TLS crypto) builds with cmake.
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crds ./crds
RUN cargo build --release --locked --bin regcred

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/regcred /usr/local/bin/regcred
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/regcred"]
CMD ["run"]
