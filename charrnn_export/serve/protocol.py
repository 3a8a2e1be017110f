"""The HTTP/1.1 connection: uvicorn's h11 protocol with a deadline for a request's headers.

    uvicorn.Config(app, http=HeaderDeadline, timeout_keep_alive=30)   (commands/serve.py)

uvicorn closes a connection that stays idle after an answer (timeout_keep_alive), but not one
that never sends a whole request: a fresh connection that sends nothing, or half of its headers
(the keep-alive timer is cancelled by the first byte), is held forever, and a few hundred of them
hold as many sockets and buffers. Here every wait for a request's headers, from the connection's
start or the end of the previous answer, ends after `timeout_keep_alive` seconds: a connection
that sent part of a request gets a 408 in OpenAI's error shape, an idle one is closed. The body
has its own deadline in the app (app.RequestLog), and a running answer none: a long generation
is not a stall.

Bytes that are not HTTP/1.1 get uvicorn's 400, in OpenAI's error shape here. h11 is used
whatever else is installed, so that this subclass is always the protocol in use.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.h11_impl import H11Protocol


def _error_answer(status: str, message: str, code: str) -> bytes:
    """A whole HTTP answer in OpenAI's error shape, written before h11 has a request to answer."""
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": code}}).encode()
    head = (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode()
    return head + body


class HeaderDeadline(H11Protocol):
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._deadline = None
        self._await_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self._in_request():  # a pipelined one may have begun
            self._await_headers()

    def connection_lost(self, exc) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _await_headers(self) -> None:
        # This deadline replaces uvicorn's keep-alive timer (same length), which would close a
        # connection holding half a pipelined request without a word.
        self._unset_keepalive_if_required()
        self._cancel_deadline()
        self._deadline = self.loop.call_later(self.timeout_keep_alive, self._headers_late)

    def _cancel_deadline(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if self._in_request() or self.transport.is_closing():
            return
        if self.conn.trailing_data[0]:  # part of a request arrived: say why it is closed
            self.transport.write(_error_answer("408 Request Timeout", "the request's headers did not arrive within "
                                               f"{self.timeout_keep_alive:g} s (--timeout)", "request_timeout"))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to bytes that are not HTTP/1.1 (a bad Content-Length, a header line
        # without a colon), in OpenAI's error shape instead of plain text.
        self.transport.write(_error_answer("400 Bad Request", f"not a valid HTTP/1.1 request: {msg}", "invalid_http"))
        self.transport.close()
