# The agent image: PostgreSQL's own image of one major version (its pg_dump,
# pg_basebackup, pg_receivewal, pg_waldump and server for restores) plus pgbackup, run as
# the image's `postgres` user (uid 999).
#   docker build -f operator/agent.Dockerfile --build-arg PG_MAJOR=16 -t pgbackup/agent:16 .
ARG PG_MAJOR=16

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY operator ./operator
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p pgbackup \
    && cp target/x86_64-unknown-linux-musl/release/pgbackup /pgbackup

FROM postgres:${PG_MAJOR}-bookworm
ARG PG_MAJOR
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="pgbackup agent for PostgreSQL ${PG_MAJOR}" \
      org.opencontainers.image.description="Runs pgbackup's backups, WAL archiving and restores" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /pgbackup /usr/local/bin/pgbackup
# The PostgreSQL programs of this major version come first on PATH.
ENV PATH="/usr/lib/postgresql/${PG_MAJOR}/bin:${PATH}"
USER 999:999
ENTRYPOINT ["/usr/local/bin/pgbackup"]
