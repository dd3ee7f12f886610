"""The language-model proposer against a real HTTP server on 127.0.0.1 speaking the chat-completions format."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from pipeline.plan.cem import CEMConfig
from pipeline.plan.proposers import ActionSpace, LanguageModelProposer, SamplerProposer, parse_plans

REPLY = """Here are my plans.
PLAN: 1 1 2 3
PLAN 2: 0 0 0 0
PLAN: FIRE RIGHT RIGHT LEFT
PLAN: 1 2 3
PLAN: 1 2 3 9
PLAN: a b c d
- PLAN 6: 3 3 3 3
thanks!"""


class ChatServer:
    """Serves scripted replies: 'ok' (REPLY), 'status500', 'notjson', 'nochoices'; records requests."""

    def __init__(self, mode: str = "ok", content: str = REPLY) -> None:
        self.mode, self.content, self.requests = mode, content, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((self.path, json.loads(body)))
                if outer.mode == "status500":
                    self.send_error(500, "boom")
                    return
                if outer.mode == "notjson":
                    payload = b"<html>not json</html>"
                elif outer.mode == "nochoices":
                    payload = json.dumps({"object": "chat.completion", "choices": []}).encode()
                else:
                    payload = json.dumps({"id": "x", "object": "chat.completion", "model": "m", "choices": [
                        {"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": outer.content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)


@pytest.fixture
def server() -> Iterator[ChatServer]:
    srv = ChatServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


SPACE = ActionSpace(True, 4, ["NOOP", "FIRE", "RIGHT", "LEFT"])


def test_parse_plans_accepts_numbers_and_names_and_counts_malformed() -> None:
    plans, rejected = parse_plans(REPLY, SPACE, 4)
    assert [p.argmax(-1).tolist() for p in plans] == [[1, 1, 2, 3], [0, 0, 0, 0], [1, 2, 2, 3], [3, 3, 3, 3]]
    assert rejected == 3  # too short, out of range, not actions
    cont = ActionSpace(False, 2, low=-1, high=1)
    ok, bad = parse_plans("PLAN: 0.5,-0.5; 1,0\nPLAN: 0.5,-0.5; 2,0\nPLAN: 0.1; 0.2\nPLAN: nan,0; 0,0", cont, 2)
    assert len(ok) == 1 and bad == 3
    torch.testing.assert_close(ok[0], torch.tensor([[0.5, -0.5], [1.0, 0.0]]))


def test_llm_proposer_plans_are_scored_by_the_model_and_best_wins(server: ChatServer) -> None:
    proposer = LanguageModelProposer(SPACE, base_url=server.url, model="tiny-lm", num_plans=6, timeout=5)
    want = torch.tensor([1, 2, 2, 3])

    def score(c: torch.Tensor) -> torch.Tensor:  # the "world model": agreement with a known best plan
        return (c.argmax(-1) == want).float().sum(1)

    res = proposer.propose(score, 4)
    assert res.best.argmax(-1).tolist() == [1, 2, 2, 3] and res.score == 4 and res.evaluated == 4
    assert vars(proposer.stats) == {"requests": 1, "failed_requests": 0, "plans": 4, "rejected": 3, "fallbacks": 0}
    path, body = server.requests[0]
    assert path == "/v1/chat/completions" and body["model"] == "tiny-lm"
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "6 different candidate plans" in body["messages"][1]["content"]
    assert "exactly 4 action numbers" in body["messages"][1]["content"] and "1=FIRE" in body["messages"][1]["content"]


@pytest.mark.parametrize("mode", ["status500", "notjson", "nochoices", "garbage"])
def test_llm_failures_are_counted_and_fall_back_without_crashing(mode: str) -> None:
    srv = ChatServer("ok" if mode == "garbage" else mode, content="I cannot help with that.\nPLAN: 7 7")
    srv.thread.start()
    try:
        fallback = SamplerProposer(SPACE, CEMConfig(population=8, elites=2, iterations=1))
        proposer = LanguageModelProposer(SPACE, base_url=srv.url, timeout=5, fallback=fallback)
        res = proposer.propose(lambda c: -c.argmax(-1).float().sum(1), 4, torch.Generator().manual_seed(0))
        assert res.best.shape == (4, 4) and res.evaluated == 8  # the sampler decided
        assert proposer.stats.fallbacks == 1 and proposer.stats.requests == 1 and len(srv.requests) == 1
        assert proposer.stats.failed_requests == (0 if mode == "garbage" else 1)
        assert proposer.stats.rejected == (1 if mode == "garbage" else 0)
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()


def test_unreachable_endpoint_is_one_failed_request() -> None:
    srv = ChatServer()
    url = srv.url
    srv.httpd.server_close()  # nothing listens on the port any more
    proposer = LanguageModelProposer(SPACE, base_url=url, timeout=2)
    res = proposer.propose(lambda c: torch.zeros(len(c)), 3, torch.Generator().manual_seed(0))
    assert res.best.shape == (3, 4)
    assert proposer.stats.failed_requests == 1 and proposer.stats.fallbacks == 1 and proposer.stats.requests == 1
