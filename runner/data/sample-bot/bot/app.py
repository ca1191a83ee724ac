"""The bot's HTTP face: /health for the deployer, /balance for the demo."""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from bot.ledger import LEDGER, average_spend, balance, format_cents

VERSION = os.environ.get("BOT_VERSION", "dev")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/health":
            self._reply(200, {"status": "ok", "version": VERSION})
        elif url.path == "/balance":
            user = int(parse_qs(url.query).get("user", ["0"])[0])
            amounts = LEDGER.get(user, [])
            self._reply(200, {"balance": format_cents(balance(user)),
                              "average_spend": format_cents(int(average_spend(amounts)))})
        else:
            self._reply(404, {"error": "not found"})

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8000"))), Handler).serve_forever()


if __name__ == "__main__":
    main()
