# Test-only stand-in for the public prom/prometheus image (which cannot be pulled here),
# built from Debian's prometheus package with the official image's entrypoint, paths and user.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update && apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && { [ -e /bin/prometheus ] || ln -s /usr/bin/prometheus /bin/prometheus; } \
    && mkdir -p /prometheus /etc/prometheus && chown -R nobody:nogroup /prometheus /etc/prometheus
USER nobody
EXPOSE 9090
VOLUME ["/prometheus"]
WORKDIR /prometheus
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
