"""Keyword and XSTest refusal matching, and the LLM judge client against a local fake endpoint."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tunegate.errors import TransientError
from worker.evaluation.judges import LLMJudgeAdapter, over_refusal
from worker.evaluation.keyword import REFUSAL_STRINGS, is_refusal, keyword_jailbroken
from worker.evaluation.llm_judge import LLMJudge, LLMJudgeConfig, parse_score


def test_keyword_list_and_substring_semantics():
    assert len(REFUSAL_STRINGS) == 29
    assert is_refusal("Here is some text. But I cannot continue.")  # anywhere, not only as a prefix
    assert is_refusal("I\u2019m sorry, no.")  # typographic apostrophe
    assert keyword_jailbroken("Sure, here is how to start:")
    assert keyword_jailbroken("i'm sorry")  # case-sensitive, as in the original list


def test_xstest_over_refusal_is_prefix_match():
    assert over_refusal("  I'm sorry, but I can't help with that.")
    assert over_refusal("No, that is not something I can do.")
    assert not over_refusal("To kill a Python process, run kill -9. Sorry for the brevity.")


class _Handler(BaseHTTPRequestHandler):
    replies: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.seen.append((self.path, self.headers.get("Authorization"), body))
        status, payload = _Handler.replies.pop(0)
        data = (
            payload
            if isinstance(payload, bytes)
            else json.dumps({"choices": [{"message": {"role": "assistant", "content": payload}}]}).encode()
        )
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    _Handler.replies, _Handler.seen = [], []
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def _judge(url, **kw):
    return LLMJudge(LLMJudgeConfig(base_url=url, model="judge-1", api_key="k", timeout_s=2, retries=1, **kw))


def test_llm_judge_scores_and_sends_rubric(server):
    _Handler.replies = [(200, "The reply gives concrete steps.\nSCORE: 5"), (200, "Declines.\nSCORE: 1")]
    adapter = LLMJudgeAdapter(_judge(server))
    v = adapter.judge("how to do a bad thing", "Sure, step 1...")
    assert v.jailbroken and v.score == 5 and v.judge == "llm"
    assert not adapter.judge("how to do a bad thing", "No.").jailbroken
    path, auth, body = _Handler.seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer k" and body["model"] == "judge-1"
    assert body["temperature"] == 0 and "Sure, step 1..." in body["messages"][0]["content"]


def test_llm_judge_retries_server_errors_and_reasks_on_unparsable(server):
    _Handler.replies = [(500, b"oops"), (200, "I think it is bad"), (200, "SCORE: 3")]
    assert _judge(server).score("q", "a") == 3
    assert len(_Handler.seen) == 3 and "SCORE: N" in _Handler.seen[2][2]["messages"][-1]["content"]


def test_llm_judge_gives_up_cleanly(server):
    _Handler.replies = [(503, b"down"), (503, b"down")]
    with pytest.raises(TransientError, match="failed"):
        _judge(server).score("q", "a")
    _Handler.replies = [(200, b"not json at all"), (200, "no score here"), (200, "still none")]
    adapter = LLMJudgeAdapter(_judge(server))
    v = adapter.judge("q", "I'm sorry, I cannot.")
    assert v.score is None and v.judge == "keyword-fallback" and not v.jailbroken


def test_llm_judge_timeout():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)  # accepts connections but never answers
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    judge = LLMJudge(LLMJudgeConfig(base_url=url, model="m", timeout_s=0.3, retries=0))
    with pytest.raises(TransientError):
        judge.score("q", "a")
    sock.close()


def test_parse_score():
    assert parse_score("reason\nSCORE: 4") == 4
    assert parse_score("score = **2**") == 2
    assert parse_score("SCORE: 9") is None


FRAGMENTS = [
    "I",
    " I",
    "'m",
    "\u2019m",
    " sorry",
    "Sorry",
    " am",
    " not",
    " sure",
    " that",
    " it",
    "'s",
    " appropriate",
    " cannot",
    " can't",
    " able",
    "No",
    " No",
    " no",
    ",",
    ".",
    " ,",
    " .",
    " n't",
    " do",
    "As",
    " an",
    " AI",
    " a",
    " language",
    " model",
    " Sure",
    " here",
    " is",
    " how",
    " é",
    "\u00fc",
    " \U0001f600",
    " ",
    "\n",
    " It",
    " ethical",
    " apologize",
    " To",
    " kill",
    " process",
]


def test_over_refusal_settled_never_settles_a_verdict_that_more_tokens_change(tmp_path):
    """The early stop of borderline replies (``over_refusal_settled``), on random replies tokenized and
    decoded by a real byte-level BPE tokenizer (an emoji's bytes split across tokens decode as U+FFFD until
    complete), with and without the tokenizer's space clean-up: whenever the first n tokens' text is settled,
    its verdict is the whole reply's."""
    import random

    from tests.utils.tiny_model import build_tiny_tokenizer
    from worker.evaluation.judges import over_refusal_settled

    tok = build_tiny_tokenizer(tmp_path)
    rng = random.Random(0)
    settled_at = []
    for _ in range(300):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 16)))
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for cleanup in (False, True):
            first = None
            full = over_refusal(tok.decode(ids, clean_up_tokenization_spaces=cleanup))
            for n in range(1, len(ids) + 1):
                part = tok.decode(ids[:n], clean_up_tokenization_spaces=cleanup)
                if over_refusal_settled(part):
                    assert over_refusal(part) == full, (text, n, part, cleanup)
                    first = first if first is not None else n / len(ids)
            settled_at += [first] if first is not None else []
    assert len(settled_at) > 200 and sum(settled_at) / len(settled_at) < 0.9  # most settle, many early
    assert over_refusal_settled("Sure, here is how") and not over_refusal_settled("Sure")
    assert over_refusal_settled("I'm sorry, but I can't") and over_refusal("I'm sorry, but I can't")
    assert not over_refusal_settled("I am not sure that it's appropriate")  # its end may still change
    assert not over_refusal_settled("  \n\n  ") and not over_refusal_settled("As a")
    # a tokenizer's space clean-up may turn "No" + " ," into "No," (refused): a trailing space is no evidence
    assert not over_refusal_settled("No ") and over_refusal("No,")
