#!/usr/bin/env python3
"""A webhook receiver for websocket-sse-server, with the Python standard library only.

It checks each webhook's Standard Webhooks signature, answers 204, and falls back to a mobile
push for every event that no client of its user acknowledged (message.undelivered).

    WEBHOOK_SECRET=whsec_... PORT=9000 python3 docs/examples/webhook_receiver.py

and start the gateway with WEBHOOK_URL=http://<this host>:9000/webhooks and the same
WEBHOOK_SECRET. See docs/webhooks.md.
"""

import base64
import hashlib
import hmac
import json
import os
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Refuse webhooks signed longer ago (or further ahead) than this: replays of old requests.
TOLERANCE_SECONDS = 5 * 60
# A message.undelivered body holds the whole event (at most the gateway's MAX_BODY_BYTES).
MAX_BODY_BYTES = 8 * 1024 * 1024
# How many webhook ids to remember: a retried webhook keeps its id, handle it once.
REMEMBERED_IDS = 10_000


class InvalidSignature(Exception):
    """The webhook is not from the gateway (or too old): answer 401, do nothing."""


def secret_key(secret):
    """The HMAC key of a `whsec_<base64>` secret."""
    return base64.b64decode(secret.removeprefix("whsec_"), validate=True)


def verify(key, headers, body, now=None, tolerance=TOLERANCE_SECONDS):
    """Raises InvalidSignature unless one of the `v1,` signatures of `webhook-signature` is the
    HMAC-SHA256 of `<webhook-id>.<webhook-timestamp>.<body>` and the timestamp is recent.
    `headers` is anything with a case-insensitive `get` (or a dict with lower-case keys);
    `tolerance=None` skips the timestamp check (for test vectors)."""
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and timestamp and signatures):
        raise InvalidSignature("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise InvalidSignature("webhook-timestamp is not a whole number") from None
    if tolerance is not None:
        now = time.time() if now is None else now
        if abs(now - sent_at) > tolerance:
            raise InvalidSignature("webhook-timestamp is too old or too new")
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    # Several signatures may be listed, space-separated (e.g. while a secret is rotated).
    for candidate in signatures.split():
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature.encode(), expected):
            return
    raise InvalidSignature("no valid v1 signature")


def send_mobile_push(user_id, event):
    """Placeholder: hand the event to your mobile push provider (APNs, FCM, ...). Keep it quick
    (or queue the work): the gateway waits at most WEBHOOK_TIMEOUT for the answer."""
    print(f"mobile push to {user_id}: {event['event_type']} {json.dumps(event['data'])}")


def handle(webhook):
    """Acts on one verified webhook."""
    kind, data = webhook["type"], webhook["data"]
    if kind == "message.undelivered":
        # reason: offline, not_acked or slow_consumer. `event` is the frame the client would
        # have received: event_type, event_id, user_id, timestamp, data.
        send_mobile_push(data["user_id"], data["event"])
    elif kind == "user.connected":
        print(f"{data['user_id']} is online ({data['transport']}, {data['connection_id']})")
    elif kind == "user.disconnected":
        print(f"{data['user_id']} is offline ({data['reason']})")
    elif kind == "client.message":
        print(f"{data['user_id']} says {data['message']!r}")


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            return self.answer(413)
        body = self.rfile.read(length)
        try:
            verify(self.server.key, self.headers, body)
        except InvalidSignature as error:
            print(f"refused: {error}")
            return self.answer(401)
        msg_id = self.headers["webhook-id"]
        if self.server.seen(msg_id):
            return self.answer(204)  # a retry of a webhook already handled
        try:
            handle(json.loads(body))
        except Exception as error:  # answer 500: the gateway retries later
            print(f"failed: {error!r}")
            return self.answer(500)
        self.server.remember(msg_id)
        self.answer(204)

    def answer(self, status):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    def __init__(self, address, key):
        super().__init__(address, Receiver)
        self.key = key
        self.handled = OrderedDict()
        self.lock = threading.Lock()

    def seen(self, msg_id):
        with self.lock:
            return msg_id in self.handled

    def remember(self, msg_id):
        with self.lock:
            self.handled[msg_id] = True
            while len(self.handled) > REMEMBERED_IDS:
                self.handled.popitem(last=False)


def main():
    key = secret_key(os.environ["WEBHOOK_SECRET"])
    port = int(os.environ.get("PORT", "9000"))
    server = Server(("0.0.0.0", port), key)
    print(f"listening on :{port}")
    server.serve_forever()


if __name__ == "__main__":
    main()
