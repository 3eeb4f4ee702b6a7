# Test-only stand-in for the public nginx image (which cannot be pulled here), built from
# Debian's nginx package and laid out like the official image where compose.yaml relies on
# it: /etc/nginx/conf.d/*.conf is included, logs go to stdout/stderr, `nginx -g 'daemon off;'`.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update && apt-get install -y --no-install-recommends nginx-light \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* \
    && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
