# tenant-backup as a container: what render.yaml runs, and anything else that runs images.
#
#   docker build --build-arg PG_MAJOR=16 -t tenant-backup .
#   docker run --rm -e DATABASE_URL=... -e BACKUP_STORAGE=s3://bucket/prefix ... tenant-backup tenant-backup doctor
#
# PG_MAJOR is the major version of your PostgreSQL server: pg_dump must be at least as new as the
# server, and the client of exactly that version is the one psql restores best with. On Render,
# set PG_MAJOR in the environment group: Render passes environment variables to the build as
# build arguments.
ARG PG_MAJOR=17
ARG DEBIAN_RELEASE=bookworm

# Build: Rust with libclang (bindgen builds the pg_query crate's PostgreSQL parser). The commands
# are scripts/build-release.sh, which .ci/run also runs (its `check` mode) on a Debian machine.
FROM rust:1-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
RUN scripts/build-release.sh build /out

# Run: Debian slim, the PostgreSQL client of the server's major version from the PGDG apt
# repository (Debian's own carries one version only), and CA certificates for TLS to the database
# and the storage.
FROM debian:${DEBIAN_RELEASE}-slim
ARG PG_MAJOR
ARG DEBIAN_RELEASE
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl; \
    install -d /usr/share/postgresql-common/pgdg; \
    curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
        https://www.postgresql.org/media/keys/ACCC4CF8.asc; \
    echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt ${DEBIAN_RELEASE}-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list; \
    apt-get update; \
    apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}"; \
    apt-get purge -y curl; apt-get autoremove -y; \
    rm -rf /var/lib/apt/lists/*; \
    useradd --system --create-home --home-dir /home/tenant-backup tenant-backup
COPY --from=build /out/tenant-backup /usr/local/bin/tenant-backup
USER tenant-backup
WORKDIR /home/tenant-backup
# Settings come from the environment only, never from a .env file that happens to be there.
ENV BACKUP_NO_DOTENV=1
# pg_dump, psql and pg_restore are found in /usr/lib/postgresql/<major>/bin. No ENTRYPOINT: a
# platform's command (Render's dockerCommand) replaces CMD whole, `tenant-backup …` included.
CMD ["tenant-backup", "run-scheduled"]
