# Garivini's binaries (garivini, gv_inject, gv_consume) on Debian, and a
# gearmand image for docker-compose.yml. Untested here: this machine has no
# Docker engine (see docs/operating.md, "docker-compose").

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY bin bin
# Workspace members: cargo loads their manifests to build any of it.
COPY bench bench
COPY testkit testkit
RUN cargo build --release --locked --bin garivini --bin gv_inject --bin gv_consume

FROM debian:bookworm-slim AS garivini
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home garivini
COPY --from=build /src/target/release/garivini /src/target/release/gv_inject /src/target/release/gv_consume /usr/local/bin/
COPY schema.sql /usr/share/garivini/schema.sql
USER garivini
ENTRYPOINT ["garivini"]

FROM debian:bookworm-slim AS gearmand
RUN apt-get update \
    && apt-get install -y --no-install-recommends gearman-job-server gearman-tools \
    && rm -rf /var/lib/apt/lists/*
USER gearman
EXPOSE 4730
# One thread: half the latency per hop on a small host (docs/performance.md).
ENTRYPOINT ["gearmand", "--config-file=/dev/null", "--listen=0.0.0.0", "--port=4730", "--threads=0", "--log-file=stderr"]
