# Test-only stand-in for the public rust:<ver>-slim-bookworm image, for engines that can pull
# nothing and hosts that cannot download a toolchain: the same layout (RUSTUP_HOME,
# CARGO_HOME, PATH, gcc + libc6-dev), with the host's rustup toolchain copied in.
# Built by tests/docker/base-images.sh; the context holds toolchain/ and rustup.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
ARG RUST_VERSION
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RUST_VERSION=${RUST_VERSION}
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY toolchain /usr/local/rustup/toolchains/${RUST_VERSION}-x86_64-unknown-linux-gnu
COPY rustup /usr/local/cargo/bin/rustup
RUN set -e; cd /usr/local/cargo/bin; \
    for t in cargo rustc rustdoc cargo-clippy clippy-driver rustfmt cargo-fmt rust-gdb rust-lldb; do \
      ln -s rustup "$t"; done; \
    printf 'version = "12"\ndefault_toolchain = "%s-x86_64-unknown-linux-gnu"\nprofile = "minimal"\nauto_self_update = "disable"\n' \
      "$RUST_VERSION" > "$RUSTUP_HOME/settings.toml"; \
    chmod -R a+w "$RUSTUP_HOME" "$CARGO_HOME"; \
    rustc -V && cargo -V
