"""Inside the sandbox: forward 127.0.0.1:PORT to the supervisor's model socket.

The container has no network (`--network none`), so the Claude Code CLI cannot reach any host.
The supervisor mounts a Unix socket at SOCKET; this forwarder lets the CLI talk plain HTTP to
`http://127.0.0.1:PORT`, and every byte goes to the supervisor's model proxy, which checks the
per-task token and holds the real API key. Nothing here is trusted or secret.
"""

import asyncio
import os
import socket
import sys

SOCKET = os.environ.get("MODEL_SOCKET", "/run/agent-runner/model.sock")
PORT = int(os.environ.get("MODEL_FORWARD_PORT", "8082"))


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            writer.close()


async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
    try:
        upstream_reader, upstream_writer = await asyncio.open_unix_connection(SOCKET)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))
    client_writer.close()
    upstream_writer.close()


async def serve(sock: socket.socket | None) -> None:
    if sock is None:
        server = await asyncio.start_server(handle, "127.0.0.1", PORT)
    else:
        server = await asyncio.start_server(handle, sock=sock)
    async with server:
        await server.serve_forever()


def background() -> None:
    """Bind the port, then serve from a detached child: whoever started us knows the port is ready when we exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", PORT))
    sock.listen(128)
    if os.fork() != 0:
        os._exit(0)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    asyncio.run(serve(sock))


if __name__ == "__main__":
    if "--background" in sys.argv[1:]:
        background()
    else:
        asyncio.run(serve(None))
