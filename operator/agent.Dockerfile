# The agent image: PostgreSQL's own image of one major version (its pg_dump,
# pg_basebackup, pg_receivewal, pg_waldump and server for restores) plus pgbackup, run as
# the image's `postgres` user (uid 999).
#   docker build -f operator/agent.Dockerfile --build-arg PG_MAJOR=16 -t pgbackup/agent:16-0.1.0 .
# (the operator asks for `pgbackup/agent:<major>-<its version>` by default).
ARG PG_MAJOR=16

FROM rust:1.95-bookworm AS build
ARG TARGETARCH
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY operator ./operator
# A static (musl) binary for the platform being built (amd64 or arm64).
RUN case "${TARGETARCH:-amd64}" in arm64) target=aarch64-unknown-linux-musl ;; *) target=x86_64-unknown-linux-musl ;; esac \
    && rustup target add "$target" \
    && cargo build --release --locked --target "$target" -p pgbackup \
    && cp "target/$target/release/pgbackup" /pgbackup

FROM postgres:${PG_MAJOR}-bookworm
ARG PG_MAJOR
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="pgbackup agent for PostgreSQL ${PG_MAJOR}" \
      org.opencontainers.image.description="Runs pgbackup's backups, WAL archiving and restores" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /pgbackup /usr/local/bin/pgbackup
# PostgreSQL's image carries no CA certificates: S3 over HTTPS and web identity need them.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# The PostgreSQL programs of this major version come first on PATH.
ENV PATH="/usr/lib/postgresql/${PG_MAJOR}/bin:${PATH}"
USER 999:999
ENTRYPOINT ["/usr/local/bin/pgbackup"]
