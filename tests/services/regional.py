"""The regional system's SEMD intake, in this process: an HTTP server on a free port that
records every document posted to it — a SEMD (multipart) or a JSON notice (the monitoring
destination's usage reports and malfunction notices)."""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.services.processes import free_port


class RegionalSystem:
    """The regional system's SEMD intake: answers 200 with an id and records every POST
    (Idempotency-Key, Authorization, the document and its metadata, or a JSON body as
    ``json``); can start late."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._posts: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._posts)

    def keys(self) -> list[str]:
        return [str(post["key"]) for post in self.received]

    def start(self) -> None:
        posts, lock = self._posts, self._lock

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                post: dict[str, Any] = {
                    "key": self.headers["Idempotency-Key"],
                    "auth": self.headers["Authorization"],
                    "path": self.path,
                }
                if self.headers["Content-Type"].startswith("application/json"):
                    post["json"] = json.loads(body)
                else:
                    raw = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body
                    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
                    parts = {
                        part.get_param("name", header="content-disposition"): part.get_content()
                        for part in message.iter_parts()
                    }
                    post["document"] = parts["document"]
                    post["metadata"] = json.loads(parts["metadata"])
                with lock:
                    posts.append(post)
                    answer = json.dumps({"id": f"remd-{len(posts)}"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
