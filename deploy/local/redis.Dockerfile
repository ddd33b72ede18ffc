# Redis from Debian on the local base (deploy/local-images.sh), a stand-in for the official redis image. Runs as
# the redis user.
ARG BASE=chexcurate-local/python:3.11-bookworm
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*
COPY redis-entrypoint.sh /usr/local/bin/redis-entrypoint.sh
USER redis
WORKDIR /var/lib/redis
EXPOSE 6379
ENTRYPOINT ["redis-entrypoint.sh"]
CMD ["redis-server"]
