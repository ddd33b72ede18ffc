# PostgreSQL from Debian on the local base (deploy/local-images.sh), a stand-in for the official postgres image:
# same POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB variables, data in /var/lib/postgresql/data, pg_isready on
# PATH, password (scram) auth over the network. Runs as the postgres user.
ARG BASE=chexcurate-local/python:3.11-bookworm
FROM ${BASE}
# no cluster on install: the entrypoint initialises PGDATA on the first start
RUN mkdir -p /etc/postgresql-common/createcluster.d \
 && echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/no-main-cluster.conf \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown postgres:postgres /var/lib/postgresql/data /var/run/postgresql \
 && chmod 0700 /var/lib/postgresql/data
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
USER postgres
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["postgres-entrypoint.sh"]
CMD ["postgres"]
