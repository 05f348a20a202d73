# WebRTC-to-SIP gateway. Run with host networking so the media port range and
# the advertised addresses are the host's own:
#   docker build -t webrtc-sip-gateway .
#   docker run --network host -v /etc/webrtc-sip-gateway:/etc/webrtc-sip-gateway:ro \
#     webrtc-sip-gateway --config /etc/webrtc-sip-gateway/gateway.toml
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
      libopus0 libbcg729-0 openssl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/webrtc-sip-gateway
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY config ./config
RUN python3 -m venv .venv && .venv/bin/pip install --no-cache-dir . \
 && useradd --system --home /var/lib/webrtc-sip-gateway --create-home webrtc-gw
USER webrtc-gw
ENV GATEWAY_GENERAL_STATE_DIR=/var/lib/webrtc-sip-gateway
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/webrtc-sip-gateway/.venv/bin/webrtc-sip-gateway"]
CMD ["--config", "/opt/webrtc-sip-gateway/config/gateway.toml"]
