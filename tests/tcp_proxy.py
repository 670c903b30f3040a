"""A TCP proxy for the tests: ``python tcp_proxy.py LISTEN_PORT TARGET_PORT [--rate B]``.

Forwards every connection on 127.0.0.1:LISTEN_PORT to 127.0.0.1:TARGET_PORT, at most B bytes
per second towards the target when ``--rate`` is given (so a test can cut an upload
half-way by killing the proxy). Prints the bytes sent towards the target, a line a second.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading
import time

sent = [0]


def pipe(source: socket.socket, target: socket.socket, rate: int | None) -> None:
    try:
        while True:
            data = source.recv(16384 if rate is None else max(1, min(16384, rate // 20)))
            if not data:
                break
            if rate is not None:
                time.sleep(len(data) / rate)
            target.sendall(data)
            sent[0] += len(data)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def serve(listen: int, target: int, rate: int | None) -> None:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen))
    server.listen(64)
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection(("127.0.0.1", target))
        except OSError:
            client.close()
            continue
        threading.Thread(target=pipe, args=(client, upstream, rate), daemon=True).start()
        threading.Thread(target=pipe, args=(upstream, client, None), daemon=True).start()


def report() -> None:
    while True:
        time.sleep(1)
        print(f"sent {sent[0]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("listen", type=int)
    parser.add_argument("target", type=int)
    parser.add_argument("--rate", type=int, default=None)
    args = parser.parse_args()
    threading.Thread(target=report, daemon=True).start()
    serve(args.listen, args.target, args.rate)


if __name__ == "__main__":
    sys.exit(main())
