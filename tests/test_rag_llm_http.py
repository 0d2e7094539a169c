"""The OpenAI-compatible back-end against a loopback chat-completions server (all traffic on 127.0.0.1)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from eclip_monai.rag import LLMBackendError, OpenAIChatBackend

MESSAGES = [{"role": "system", "content": "Write a report."}, {"role": "user", "content": "[1] No effusion."}]


def completion(text: str) -> dict:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    return {"id": "c1", "object": "chat.completion", "choices": [choice]}


class ChatServer:
    """Serves scripted replies in order: ``(status, body)`` with ``body`` a dict (JSON), bytes, or
    ``("sleep", seconds)`` to stall. Records each request body it received."""

    def __init__(self, replies):
        self.replies, self.requests = list(replies), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                        "body": json.loads(self.rfile.read(length))})
                status, body = server.replies.pop(0) if len(server.replies) > 1 else server.replies[0]
                if status == "sleep":
                    time.sleep(body)
                    return
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            block_on_close = False  # a stalled handler must not hold up the test's teardown

            def handle_error(self, request, client_address):
                pass  # the client hanging up on a stalled reply is expected

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def backend(url, **kwargs) -> OpenAIChatBackend:
    return OpenAIChatBackend(url, model="tiny-llm", **{"timeout_s": 2.0, "max_retries": 2, "backoff_s": 0.01,
                                                       **kwargs})


def test_normal_reply_sends_the_chat_completions_request():
    with ChatServer([(200, completion("  No acute findings.  "))]) as server:
        chat = backend(server.url, api_key="local-key", temperature=0.2, extra_params={"stop": ["###"]})
        text = chat.generate(MESSAGES)
    assert text == "No acute findings."
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer local-key"
    assert request["body"]["messages"] == MESSAGES and request["body"]["model"] == "tiny-llm"
    assert request["body"]["temperature"] == 0.2 and request["body"]["stop"] == ["###"]


def test_base_url_without_v1_gets_it():
    with ChatServer([(200, completion("ok"))]) as server:
        assert backend(server.url.removesuffix("/v1")).generate(MESSAGES) == "ok"
    assert server.requests[0]["path"] == "/v1/chat/completions"


def test_server_error_then_success_is_retried():
    replies = [(500, {"error": "overloaded"}), (429, {"error": "slow down"}), (200, completion("fine"))]
    with ChatServer(replies) as server:
        assert backend(server.url).generate(MESSAGES) == "fine"
    assert len(server.requests) == 3


def test_client_errors_are_not_retried_and_name_the_url():
    with ChatServer([(400, {"error": {"message": "unknown model"}})]) as server:
        with pytest.raises(LLMBackendError, match=r"127\.0\.0\.1.*HTTP 400.*unknown model"):
            backend(server.url).generate(MESSAGES)
    assert len(server.requests) == 1


def test_a_stalled_server_times_out_after_bounded_retries():
    with ChatServer([("sleep", 3.0)]) as server:
        start = time.perf_counter()
        with pytest.raises(LLMBackendError, match=r"after 2 attempt\(s\).*(timed out|Timeout)"):
            backend(server.url, timeout_s=0.3, max_retries=1).generate(MESSAGES)
        elapsed = time.perf_counter() - start
    assert len(server.requests) == 2 and elapsed < 2.0


@pytest.mark.parametrize("body, found", [
    (b"<html>not json</html>", "expected JSON"),
    ({"choices": []}, "choices\\[0\\].message.content"),
    ({"choices": [{"message": {"role": "assistant"}}]}, "choices\\[0\\].message.content"),
    ({"choices": [{"message": {"content": None}}]}, "choices\\[0\\].message.content"),
])
def test_malformed_responses_raise_a_clear_error(body, found):
    with ChatServer([(200, body)]) as server:
        with pytest.raises(LLMBackendError, match=rf"127\.0\.0\.1.*malformed response.*{found}"):
            backend(server.url).generate(MESSAGES)


def test_a_closed_port_gives_a_clear_error():
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    expected = rf"127\.0\.0\.1:{port}/v1/chat/completions.*after 3 attempt.*refused"
    with pytest.raises(LLMBackendError, match=expected):
        backend(f"http://127.0.0.1:{port}/v1").generate(MESSAGES)
