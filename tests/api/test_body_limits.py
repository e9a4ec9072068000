"""Request bodies are limited while they are read: a client that keeps sending gets its 413 mid-body.

Each test streams a chunked body (no Content-Length) over a raw socket past the limit and then stops
sending without ending the body: the server must answer on its own. Code that read the whole body before
checking its size would wait for the rest (the socket timeout turns that into a failure).
"""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import httpx

from tests.api.conftest import new_key
from tests.api.server import Server

UPLOAD_LIMIT = 200_000  # TUNEGATE_MAX_UPLOAD_BYTES of the test server (tests/api/conftest.py)
BODY_LIMIT = 1024 * 1024  # the default TUNEGATE_MAX_BODY_BYTES
CHUNK = 16 * 1024


def _send_until_answered(
    server: Server, path: str, headers: dict[str, str], head: bytes, filler: bytes, total: int
) -> tuple[int, dict[str, str], dict[str, object]]:
    """Send ``head`` then ``filler`` repeated up to ``total`` bytes as chunks, never the final chunk; return
    the response the server sent while the body was still open."""
    url = urlsplit(server.base_url)
    lines = [f"POST {path} HTTP/1.1", f"Host: {url.netloc}", "Transfer-Encoding: chunked"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    sent = 0
    with sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        pieces = [head] + [filler] * ((total - len(head)) // len(filler) + 1)
        try:
            for piece in pieces:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
                if sent >= total:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending: read its answer
        data = b""
        while b"\r\n\r\n" not in data:
            got = sock.recv(65536)
            assert got, "connection closed without a response"
            data += got
        head_raw, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head_raw.decode("latin-1").split("\r\n")
        resp_headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        length = int(resp_headers["content-length"])
        while len(body) < length:
            got = sock.recv(65536)
            assert got, "connection closed mid-response"
            body += got
        _assert_closed(sock)
    return int(status_line.split()[1]), resp_headers, json.loads(body[:length])


def _assert_closed(sock: socket.socket) -> None:
    """Issue 29 §6: after its 413 the server closes the connection instead of reading (and discarding) the
    rest of the body: the client's next read ends (EOF, or a reset for the bytes left unread)."""
    sock.settimeout(5)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError as exc:
        raise AssertionError("the connection stayed open after the 413") from exc


def _assert_openai_413(status: int, headers: dict[str, str], body: dict[str, object], code: str) -> None:
    assert status == 413, body
    assert headers["x-request-id"].startswith("req_")
    assert headers.get("connection") == "close", headers
    err = body["error"]
    assert isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code and err["type"] == "invalid_request_error"


def test_chunked_upload_is_refused_at_the_limit_without_reading_the_rest(server: Server) -> None:
    """Issue 11.3: a chunked upload several times the limit gets its 413 before the body ends, and no
    partial object is left in storage."""
    boundary = "tgboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    headers = {
        "Authorization": f"Bearer {new_key()}",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    status, resp_headers, body = _send_until_answered(
        server, "/v1/files", headers, head, b'{"prompt": "x", "completion": "y"}\n' * 400, 8 * UPLOAD_LIMIT
    )
    _assert_openai_413(status, resp_headers, body, "file_too_large")
    assert list((server.home / "files").rglob("*.part")) == []


def test_chunked_json_body_is_refused_at_the_limit_without_reading_the_rest(server: Server) -> None:
    """Issue 11.4: a chunked JSON body far over the limit gets a 413 (OpenAI shape, request id) while the
    client is still sending, instead of being read into memory."""
    headers = {"Authorization": f"Bearer {new_key()}", "Content-Type": "application/json"}
    head = b'{"model": "smollm2-135m", "training_file": "file-x", "suffix": "'
    status, resp_headers, body = _send_until_answered(
        server, "/v1/fine_tuning/jobs", headers, head, b"a" * CHUNK, 4 * BODY_LIMIT
    )
    _assert_openai_413(status, resp_headers, body, "request_too_large")
    assert str(BODY_LIMIT) in str(body["error"])


def test_declared_json_body_over_the_limit_is_refused_before_reading(server: Server) -> None:
    resp = httpx.post(
        f"{server.base_url}/v1/fine_tuning/jobs",
        content=b"{" + b" " * (BODY_LIMIT + 10) + b"}",
        headers={"Authorization": f"Bearer {new_key()}", "Content-Type": "application/json"},
        timeout=30,
    )
    _assert_openai_413(resp.status_code, dict(resp.headers), resp.json(), "request_too_large")


def test_bodies_under_the_limits_still_work(server: Server) -> None:
    key = new_key()
    resp = httpx.post(
        f"{server.base_url}/v1/fine_tuning/jobs",
        json={"model": "smollm2-135m", "training_file": "file-nope", "suffix": "s" * 10},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert resp.status_code == 404 and resp.json()["error"]["param"] == "training_file"
