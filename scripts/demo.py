"""Demo: a local switch, a far end, the gateway, and one test call through them.

Starts on loopback
  * Kamailio as the SIP switch (127.0.0.1, realm example.test, users alice/alicepw,
    bob/bobpw, carol/carolpw; calls to 9<port> go to a far end at 127.0.0.3:<port>),
  * sipp as a far end that answers calls to 95090 (127.0.0.3:5090),
  * the gateway (ws://127.0.0.2:8080, wss://127.0.0.2:8443, metrics on 127.0.0.2:9100),
then places a test call from a JsSIP browser stack (alice -> 95090) and
reports it. Without --once it keeps everything running until Ctrl-C, so a
webphone can be pointed at ws://127.0.0.2:8080 (or wss://…:8443).

    .venv/bin/python scripts/demo.py [--once]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.gateway import GatewayProcess  # noqa: E402
from tests.helpers.jssip import JsSipClient  # noqa: E402
from tests.helpers.kamailio import Kamailio  # noqa: E402
from tests.helpers.sipp import Sipp  # noqa: E402

FAR_END_PORT = 5090


async def main() -> int:
    ap = argparse.ArgumentParser(description="Run the gateway demo on loopback.")
    ap.add_argument("--once", action="store_true", help="exit after the test call")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    kam = Kamailio()
    kam.start(work / "kamailio")
    far = Sipp(
        "uas_answer.xml",
        workdir=work / "sipp",
        port=FAR_END_PORT,
        calls=1000,
        limit=10,
        timeout_s=86400,
    )
    await far.start()
    gw = GatewayProcess(
        work,
        upstream=kam.uri("udp"),
        ws_port=8080,
        wss_port=8443,
        metrics_port=9100,
        extra={"log": {"level": "info", "sip_trace": False}},
    )
    gw_ip = "127.0.0.2"
    code = 1
    try:
        await gw.start()
        print(f"switch   Kamailio   sip:127.0.0.1:{kam.udp_port} (realm example.test)")
        print(f"far end  sipp       sip:95090@example.test -> 127.0.0.3:{FAR_END_PORT}")
        print(f"gateway  WebSocket  {gw.ws_url}   {gw.wss_url} (self-signed)")
        print(f"         metrics    http://{gw_ip}:{gw.metrics_port}/metrics")
        print(f"         log        {gw.log_path}")
        alice = await JsSipClient.start(
            ws=gw.ws_url,
            uri="sip:alice@example.test",
            password="alicepw",
            realm="example.test",
            register=True,
        )
        try:
            await alice.wait_for("registered", timeout=10)
            print("test call: alice registered through the gateway")
            await alice.send("call", target=f"sip:9{FAR_END_PORT}@example.test")
            await alice.wait_for("confirmed", timeout=10)
            print("test call: alice -> 95090 answered by the far end")
            await asyncio.sleep(1.0)
            await alice.send("hangup")
            await alice.wait_for("ended", timeout=10)
            print("test call: hung up. OK")
            code = 0
        finally:
            await alice.close()
        if not args.once:
            print("running; point a webphone at the WebSocket URL above. Ctrl-C stops.")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGINT, stop.set)
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await gw.stop()
        await far.stop()
        kam.stop()
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
