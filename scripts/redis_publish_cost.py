#!/usr/bin/env python3
"""Redis time per published event of the cluster's publish script, measured in Redis itself.

Starts a throwaway `redis-server` on a free loopback port, loads the PUBLISH script as
`src/broker/redis/scripts.rs` has it (at the working tree, or at each git revision given), and
runs batches of events through it the way a node does (`EVALSHA`, 100 events per script call
unless `--per-script` says otherwise):
then reads `usec_per_call` of `evalsha` from `INFO commandstats`. Nothing else runs in that Redis,
so the figure is the script's own cost, free of the noise of a whole cluster run on a small
machine (the node, the load generator and Redis sharing cores). Events go to users with no
connection (no subscriber), so the presence lookup of a delivered event is not included.

Usage: scripts/redis_publish_cost.py [--rounds N] [--batches N] [--users N] [--per-script N] [REV ...]
  REV   git revisions to compare (default: the working tree); alternated round by round.
Prints, per source, the median over rounds of microseconds of Redis time per event.
"""

import argparse
import json
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = "src/broker/redis/scripts.rs"
PAYLOAD_BYTES = 256


def script_source(rev):
    """PRELUDE + PUBLISH_BODY of scripts.rs at `rev` (None: the working tree)."""
    if rev is None:
        text = (ROOT / SCRIPTS).read_text()
    else:
        text = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:{SCRIPTS}"],
            check=True, capture_output=True, text=True,
        ).stdout

    def raw(name):
        match = re.search(r"const " + name + r': &str = r#"(.*?)"#;', text, re.S)
        if not match:
            sys.exit(f"{name} not found in {SCRIPTS} at {rev or 'the working tree'}")
        return match.group(1)

    return raw("PRELUDE") + raw("PUBLISH_BODY")


def declares_prefix(source):
    """Whether the script takes its prefix as KEYS[1] (and the publish command as ARGV[1])."""
    return "KEYS[1]" in source


def encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Redis:
    """A minimal RESP client: enough for these commands and their replies."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.file = self.sock.makefile("rb")

    def call(self, *args):
        self.sock.sendall(encode(*args))
        return self.reply()

    def reply(self):
        line = self.file.readline()
        kind, rest = line[:1], line[1:-2]
        if kind in (b"+", b":"):
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"$":
            length = int(rest)
            if length < 0:
                return None
            data = self.file.read(length + 2)[:-2]
            return data.decode()
        if kind == b"*":
            return [self.reply() for _ in range(int(rest))]
        raise RuntimeError(f"unexpected reply {line!r}")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis():
    binary = shutil.which("redis-server")
    if not binary:
        sys.exit("redis-server is not installed")
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="publish-cost-redis-", suffix=".log", delete=False)
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--logfile", log.name],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            client = Redis(port)
            client.call("PING")
            return process, client
        except OSError:
            time.sleep(0.05)
    process.kill()
    sys.exit(f"redis-server did not start (log: {log.name})")


def events(batch, users, per_script):
    """ARGV items of one script: `per_script` events to users round-robin."""
    items = []
    for n in range(per_script):
        user = f"user-{(batch * per_script + n) % users}"
        envelope = json.dumps({
            "event_type": "message",
            "event_id": f"01KB{random.randrange(10**22):022d}",
            "user_id": user,
            "timestamp": round(time.time(), 3),
            "data": {"pad": "x" * PAYLOAD_BYTES},
        })
        items += ["E", user, f"id-{batch}-{n}", "0", envelope]
    return items


def measure(client, sha, keyed, batches, users, per_script):
    """Microseconds of Redis time per event over `batches` scripts, on an empty Redis."""
    client.call("FLUSHALL")
    client.call("CONFIG", "RESETSTAT")
    # HISTORY_SIZE 100, HISTORY_TTL 300 s, META_TTL 24 h, HISTORY_MAX_BYTES 256 MiB.
    settings = [100, 300_000, 86_400_000, "01KBEPOCH0000000000000000", 268_435_456, 300_000]
    head = [1, "bench:", "PUBLISH", *settings] if keyed else [0, "bench:", *settings]
    for batch in range(batches):
        client.call("EVALSHA", sha, *head, *events(batch, users, per_script))
    stats = client.call("INFO", "commandstats")
    match = re.search(r"cmdstat_evalsha:calls=\d+,usec=\d+,usec_per_call=([\d.]+)", stats)
    return float(match.group(1)) / per_script


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--per-script", type=int, default=100,
                        help="events per script (a node puts up to 100; merged single pushes fewer)")
    parser.add_argument("revs", nargs="*")
    args = parser.parse_args()
    sources = args.revs or [None]
    process, client = start_redis()
    try:
        texts = {rev: script_source(rev) for rev in sources}
        shas = {rev: client.call("SCRIPT", "LOAD", texts[rev]) for rev in sources}
        results = {rev: [] for rev in sources}
        for _ in range(args.rounds):
            for rev in sources:
                results[rev].append(measure(client, shas[rev], declares_prefix(texts[rev]),
                                            args.batches, args.users, args.per_script))
        for rev in sources:
            values = results[rev]
            print(f"{rev or 'working tree'}: {statistics.median(values):.2f} µs of Redis time per "
                  f"event (median of {len(values)}; range {min(values):.2f}–{max(values):.2f})")
    finally:
        process.kill()
        process.wait()


if __name__ == "__main__":
    main()
