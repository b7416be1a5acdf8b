# Dockerfile: the broker's runtime image. Owned by build.sh's image step: it only packages the
# static release binary that ./build.sh built outside the container and staged at
# target/static/image/linux-ARCH/mqtt-broker. It must not compile anything, pull a base image or
# RUN commands (no registry and no shell are there: the base is scratch). Build it with ./build.sh.
FROM scratch

# Set by docker buildx per platform; build.sh passes it for plain docker/podman builds.
ARG TARGETARCH

LABEL org.opencontainers.image.title="mqtt-broker" \
      org.opencontainers.image.description="A small MQTT 3.1, 3.1.1 and 5.0 broker" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"

# Root-owned and not writable by the user the broker runs as.
COPY target/static/image/linux-${TARGETARCH}/mqtt-broker /mqtt-broker

# Listen on every interface of the container; publish with -p HOSTPORT:1883.
ENV SOCKET_ADDR=0.0.0.0:1883
# glibc's per-thread cache of freed blocks, off: client threads are parked and reused, and each
# would otherwise keep its own cache of blocks other threads allocated, so memory crept up with
# every connection storm (README, "Many clients").
ENV GLIBC_TUNABLES=glibc.malloc.tcache_count=0
EXPOSE 1883

# The store (sessions, queued and retained messages), used when PERSISTENCE_DIR is set:
# `docker run -v mqtt-data:/data -e PERSISTENCE_DIR=/data ...`. Persistence stays off unless
# asked for, as in mosquitto. scratch has no mkdir, so the directory owned by the runtime user
# is an empty one build.sh stages beside the binary; a VOLUME on a path missing from the image
# would be created root-owned and the broker could not write to it.
COPY --chown=65532:65532 target/static/image/data/ /data/
VOLUME /data

# Non-root; numeric because scratch has no /etc/passwd.
USER 65532:65532

# Exec form: the broker is PID 1 and gets the engine's SIGTERM itself (docker/podman stop); its
# handler exits 0 within a second or two, well inside the default 10 s stop timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/mqtt-broker"]
