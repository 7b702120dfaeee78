# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run from a slim Debian
# image as an unprivileged user.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY benches benches
COPY config.yaml config.yaml
RUN cargo build --profile production --locked --bin tollgate

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
# tollgate drains in-flight requests on SIGTERM (server.drain_timeout).
STOPSIGNAL SIGTERM
ENTRYPOINT ["tollgate"]
CMD ["serve"]
