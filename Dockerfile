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
EXPOSE 1883

# Persistent data and configuration: none yet. When the broker gets them, add a directory owned
# by the runtime user (scratch has no mkdir: COPY --chown=65532:65532 an empty directory from the
# context) and declare it, e.g. `VOLUME /data`; a VOLUME on a path that does not exist in the
# image is created root-owned, and the broker could not write to it.

# Non-root; numeric because scratch has no /etc/passwd.
USER 65532:65532

# Exec form: the broker is PID 1 and gets the engine's SIGTERM itself (docker/podman stop); its
# handler exits 0 within a second or two, well inside the default 10 s stop timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/mqtt-broker"]
