"""Forwards TCP connections to LISTEN_HOST:PORT on to 127.0.0.1:PORT, one pair of copy loops a
connection. Run inside the emulated KVM host for each `scripts/kvm-host.sh --fwd PORT`: QEMU's
user network delivers forwarded connections to the L1 guest's eth0 address, while the programs
there (such as `ember serve --listen 127.0.0.1:PORT`) listen on loopback only.

Usage: python3 tcp-forward.py LISTEN_HOST PORT [PORT...]
"""

import asyncio
import socket
import sys


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except OSError:
            pass


def handler(port):
    async def handle(client_r, client_w):
        try:
            upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            client_w.close()
            return
        for w in (client_w, upstream_w):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(pipe(client_r, upstream_w), pipe(upstream_r, client_w))

    return handle


async def main(host, ports):
    servers = [await asyncio.start_server(handler(p), host, p) for p in ports]
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], [int(p) for p in sys.argv[2:]]))
