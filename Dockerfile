# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run from a slim Debian
# image as an unprivileged user. `docker build .` builds the last stage,
# the runtime image; docker-compose.yml also builds `devcert` for its
# one-shot certificate service. Never built here: no Docker engine runs
# where this was written (docs/operations.md, "Docker");
# tests/ops/deploy.rs checks what can be checked without one.

FROM rust:1-bookworm AS build
WORKDIR /src
# The dependencies first, in a layer of their own, so that a change under
# src/ does not rebuild them: only the manifest, the lock file and the
# build script are copied, and the crate's own targets are stubs (cargo
# reads every [[bench]] the manifest declares, so each gets an empty one).
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && for bench in $(sed -n '/^\[\[bench\]\]/,/^name/s/^name *= *"\(.*\)"$/\1/p' Cargo.toml); do \
      echo 'fn main() {}' > "benches/$bench.rs"; \
    done \
 && cargo build --profile production --locked --bin tollgate
# Then the crate itself. The stubs' fingerprints are removed: the copied
# sources can be older than the stub build, and cargo would take the
# stubs for up to date.
COPY src src
COPY migrations migrations
RUN rm -rf target/production/.fingerprint/tollgate-* \
 && cargo build --profile production --locked --bin tollgate

# The demo TLS certificate for docker-compose.yml: scripts/dev-cert.sh
# needs openssl, which the runtime image does not ship.
FROM debian:bookworm-slim AS devcert
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssl \
 && rm -rf /var/lib/apt/lists/*
COPY scripts/dev-cert.sh /usr/local/bin/dev-cert.sh

FROM debian:bookworm-slim
# The system roots https:// backends are verified against (with
# proxy.ca_file); the slim image ships none.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /var/lib/tollgate tollgate \
 && mkdir -p /etc/tollgate /var/lib/tollgate \
 && chown tollgate:tollgate /var/lib/tollgate
COPY --from=build /src/target/production/tollgate /usr/local/bin/tollgate
COPY config.yaml /etc/tollgate/config.yaml
USER tollgate
WORKDIR /var/lib/tollgate
# The config is read from here unless --config says otherwise; mount your
# own over it. The SQLite client table lives in the data volume.
ENV TOLLGATE_CONFIG=/etc/tollgate/config.yaml
VOLUME ["/var/lib/tollgate"]
# 8443: the TLS listener when server.tls is configured.
EXPOSE 8080 8443 9090
# The image has no curl or wget, and only the config knows where the
# admin API listens and its token: `tollgate health` reads
# $TOLLGATE_CONFIG and asks that /healthz (exit 0 on a 2xx). A container
# run with another --config passes the same file to the probe, as the
# compose file does; a demo backend probes its own /health (--url).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["tollgate", "health"]
# tollgate drains in-flight requests on SIGTERM (server.drain_timeout).
STOPSIGNAL SIGTERM
ENTRYPOINT ["tollgate"]
CMD ["serve"]
