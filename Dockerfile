# syntax=docker/dockerfile:1
#
# idemgate and the example webhook receiver, built from this repository:
#
#   docker build -t idemgate:0.1.0 .                                 # the proxy (the last stage)
#   docker build -t idemgate-receiver:0.1.0 --target receiver .      # examples/receiver.rs
#
# Needs BuildKit (Docker's default builder since 23.0) for the cache mounts. docs/deploy.md says how
# the images are run, and what was and was not checked of this file.

# ---------------------------------------------------------------------------------------------------
# Build both binaries with the project's toolchain (rust 1.95) on the same Debian release as the
# runtime images (bookworm = distroless debian12), so the glibc the binaries link against is there.
FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
# Only what the build reads (the rest is kept out by .dockerignore too), so that editing docs or
# manifests does not invalidate this layer.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
# The registry and target caches survive between builds; the binaries are copied out of the cached
# target dir because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin idemgate --example receiver \
    && install -D -m 0755 target/release/idemgate /out/idemgate \
    && install -D -m 0755 target/release/examples/receiver /out/receiver \
    && install -d /out/state

# ---------------------------------------------------------------------------------------------------
# An init for the receiver. A process that is PID 1 in its container gets no signal it has not
# installed a handler for, and the receiver installs none: without an init it would ignore SIGTERM
# and only stop when the kubelet or Docker kills it at the end of the grace period.
# (idemgate handles SIGTERM itself and needs none.)
FROM debian:bookworm-slim AS tini
RUN apt-get update \
    && apt-get install -y --no-install-recommends 'tini=0.19.0-1*' \
    && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------------------------------------------
# The example receiver: listens on 127.0.0.1:3000 (the first argument changes it), which is where
# idemgate forwards to inside a pod.
FROM gcr.io/distroless/cc-debian12:nonroot AS receiver
COPY --from=tini /usr/bin/tini-static /usr/local/bin/tini
COPY --from=build /out/receiver /usr/local/bin/receiver
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tini", "--", "/usr/local/bin/receiver"]

# ---------------------------------------------------------------------------------------------------
# idemgate. distroless/cc: glibc and libgcc only, no shell, no package manager. Runs as the numeric
# non-root UID 65532 (numeric, so that Kubernetes' runAsNonRoot can check it). Writes nothing
# outside /var/lib/idemgate, so the root filesystem can be read-only.
FROM gcr.io/distroless/cc-debian12:nonroot AS idemgate
COPY --from=build /out/idemgate /usr/local/bin/idemgate
# The repository's example config (loopback listeners, SQLite at data/idemgate.db relative to the
# working directory below). Mount your own over /etc/idemgate: docs/deploy.md.
COPY config/idemgate.yaml /etc/idemgate/idemgate.yaml
# The SQLite directory, owned by the runtime user so that it is writable; as the working directory,
# the example config's relative path lands in it too.
COPY --from=build --chown=65532:65532 /out/state /var/lib/idemgate
VOLUME ["/var/lib/idemgate"]
WORKDIR /var/lib/idemgate
USER 65532:65532
# 8080: the proxy; 9090: admin (/healthz, /readyz, /metrics, /admin/keys). The config decides the
# addresses; these are the ones docs/deploy.md and k8s/ use.
EXPOSE 8080 9090
# `idemgate health` GETs /healthz on the config's admin.listen (0.0.0.0 and :: mapped to loopback)
# and exits 0 on 200: no shell or curl needed in the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/idemgate", "health", "--config", "/etc/idemgate/idemgate.yaml"]
ENTRYPOINT ["/usr/local/bin/idemgate"]
CMD ["serve", "--config", "/etc/idemgate/idemgate.yaml"]
