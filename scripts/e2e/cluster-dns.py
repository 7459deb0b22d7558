"""Cluster DNS of the e2e cluster (started by scripts/cluster.sh on the pod bridge's address).

The cluster has no kube-proxy (it would need IP forwarding), so Service IPs lead nowhere. This
resolver answers `<service>.<namespace>.svc.<domain>` with the ready endpoints' pod addresses,
like a headless Service, read from the API server's EndpointSlices on each query. Everything
else gets NXDOMAIN: nothing is forwarded, no traffic leaves the machine.

    python3 cluster-dns.py <listen address> <api server url> <ca> <client cert> <client key>
        [domain]

Standard library only; A queries (AAAA and others get an empty NOERROR for known names).
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

LISTEN, API, CA, CERT, KEY = sys.argv[1:6]
DOMAIN = (sys.argv[6] if len(sys.argv) > 6 else "cluster.local").strip(".").lower()
CONTEXT = ssl.create_default_context(cafile=CA)
CONTEXT.load_cert_chain(CERT, KEY)


def endpoints(service: str, namespace: str) -> list[str] | None:
    """Ready pod addresses of the Service; None when it does not exist."""
    query = urllib.parse.urlencode({"labelSelector": f"kubernetes.io/service-name={service}"})
    url = f"{API}/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices?{query}"
    with urllib.request.urlopen(url, context=CONTEXT, timeout=3) as response:
        slices = json.load(response)["items"]
    if not slices:
        svc = f"{API}/api/v1/namespaces/{namespace}/services/{service}"
        try:
            urllib.request.urlopen(svc, context=CONTEXT, timeout=3).close()
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise
    addresses: list[str] = []
    for item in slices:
        if item.get("addressType") != "IPv4":
            continue
        for endpoint in item.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready", True):
                addresses.extend(endpoint.get("addresses") or [])
    return sorted(set(addresses))


def parse_question(packet: bytes) -> tuple[str, int, int]:
    labels, offset = [], 12
    while packet[offset]:
        length = packet[offset]
        labels.append(packet[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    qtype, _qclass = struct.unpack("!HH", packet[offset + 1 : offset + 5])
    return ".".join(labels).lower(), qtype, offset + 5


def answer(packet: bytes) -> bytes:
    ident, flags = struct.unpack("!HH", packet[:4])
    name, qtype, end = parse_question(packet)
    question = packet[12:end]
    rcode, records = 3, []  # NXDOMAIN
    parts = name.split(".")
    suffix = ["svc", *DOMAIN.split(".")]
    if len(parts) == 2 + len(suffix) and parts[2:] == suffix:
        try:
            found = endpoints(parts[0], parts[1])
        except Exception as error:
            print(f"{name}: {error}", file=sys.stderr, flush=True)
            found, rcode = None, 2
        if found is not None:
            rcode = 0
            if qtype == 1:
                records = found
    header = struct.pack("!HHHHHH", ident, 0x8400 | (flags & 0x0100) | rcode, 1, len(records), 0, 0)
    body = b"".join(
        b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + socket.inet_aton(ip) for ip in records
    )
    return header + question + body


def serve() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LISTEN, 53))
    print(f"cluster DNS on {LISTEN}:53 for *.svc.{DOMAIN}", file=sys.stderr, flush=True)
    while True:
        packet, peer = sock.recvfrom(1500)

        def reply(packet: bytes = packet, peer: tuple[str, int] = peer) -> None:
            try:
                sock.sendto(answer(packet), peer)
            except Exception as error:
                print(f"bad query from {peer}: {error}", file=sys.stderr, flush=True)

        threading.Thread(target=reply, daemon=True).start()


if __name__ == "__main__":
    serve()
