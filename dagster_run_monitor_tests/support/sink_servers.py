"""Local stand-ins for the services alerts go to, all on 127.0.0.1: an HTTP server that
records every request (Slack's Web API, a Teams webhook, PagerDuty's Events API, a webhook)
and answers as the service would, and an SMTP server (aiosmtpd)."""

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # JSON, decoded


@dataclass
class HttpSink:
    """What the server received, and how it answers: ``status``, ``answer`` (JSON), after
    ``delay`` seconds."""

    url: str
    requests: list[Request] = field(default_factory=list)
    status: int = 200
    answer: Any = None
    delay: float = 0.0
    answered: int = 0  # requests answered (a delayed one, once its delay is over)


@contextmanager
def http_sink(status: int = 200, answer: Any = None) -> Iterator[HttpSink]:
    sink = HttpSink(url="", status=status, answer=answer)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            body = json.loads(raw) if raw else None
            sink.requests.append(Request("POST", self.path, dict(self.headers), body))
            time.sleep(sink.delay)
            data = json.dumps(sink.answer if sink.answer is not None else {}).encode()
            try:
                self.send_response(sink.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                sink.answered += 1
            except OSError:
                pass  # the client gave up waiting

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sink.url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (a service that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SmtpSink:
    port: int
    messages: list[Message] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)  # user names that logged in


@contextmanager
def smtp_sink(username: str, password: str, tls: Any = None) -> Iterator[SmtpSink]:
    """An SMTP server on 127.0.0.1 that requires ``username``/``password``: after STARTTLS
    with ``tls`` (an ``ssl.SSLContext``), else without TLS (which only a test server allows)."""
    import warnings

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    sink = SmtpSink(port=closed_port())

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            sink.messages.append(message_from_bytes(envelope.content, policy=policy.default))
            return "250 OK"

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        ok = data.login.decode() == username and data.password.decode() == password
        if ok:
            sink.logins.append(username)
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AUTH without TLS: fine on loopback, in a test
        controller = Controller(
            Handler(),
            hostname="127.0.0.1",
            port=sink.port,
            authenticator=authenticate,
            auth_required=True,
            auth_require_tls=tls is not None,
            require_starttls=tls is not None,
            tls_context=tls,
        )
        controller.start()
    try:
        yield sink
    finally:
        controller.stop()
