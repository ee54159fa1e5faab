"""Pure parts of the proxy: request preparation, program-id extraction, SSE tap, usage, error mapping."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import httpx
import pytest
from hypothesis import given, settings
from aiohttp.client_reqrep import ConnectionKey
from hypothesis import strategies as st

from ThunderAgent.forward import (
    BackendClient,
    ProxyError,
    backend_error_body,
    request_headers,
    response_headers,
    translate_transport_error,
    transport_error,
)
from ThunderAgent.parsing import extract_program_id, extract_resources, prepare_forward, validate_chat
from ThunderAgent.streaming import SSETap, usage_from

SAMPLES = Path(__file__).parent.parent / "fakes" / "data" / "vllm-responses-sample.txt"


def sample_stream(section: str) -> bytes:
    """The raw SSE of one captured vLLM streaming response."""
    text = SAMPLES.read_text()
    part = text.split(section, 1)[1].split("\n###", 1)[0]
    lines = [ln for ln in part.splitlines(keepends=True) if not ln.startswith("#")]
    raw = "".join(lines).strip("\n") + "\n\n"
    return raw.encode()


USAGE_STREAM = sample_stream(
    "### POST /v1/chat/completions (streaming, stream_options.include_usage=true) -- raw SSE"
)
CONT_STREAM = sample_stream(
    "### POST /v1/chat/completions (streaming, include_usage + continuous_usage_stats) -- raw SSE"
)


def test_sample_streams_parsed():
    assert USAGE_STREAM.count(b"data: ") == 9 and USAGE_STREAM.endswith(b"data: [DONE]\n\n")


def test_tap_strips_only_the_usage_chunk():
    tap = SSETap(strip_usage_chunk=True)
    out = tap.feed(USAGE_STREAM) + tap.flush()
    assert out == USAGE_STREAM.replace(
        b'data: {"id":"chatcmpl-a50e4dfb066c042d","object":"chat.completion.chunk","created":1795545610,"model":"tiny","choices":[],"usage":{"prompt_tokens":15,"total_tokens":21,"completion_tokens":6},"system_fingerprint":"vllm-0.32.0-9ea56831"}\n\n',
        b"",
    )
    assert tap.usage is not None and (
        tap.usage.prompt_tokens,
        tap.usage.completion_tokens,
        tap.usage.total_tokens,
    ) == (15, 6, 21)
    assert tap.usage.cached_tokens is None and tap.saw_done and tap.events == 8


def test_tap_without_stripping_is_byte_identical_and_reads_last_usage():
    tap = SSETap(strip_usage_chunk=False)
    out = b"".join(tap.feed(USAGE_STREAM[i : i + 7]) for i in range(0, len(USAGE_STREAM), 7)) + tap.flush()
    assert out == USAGE_STREAM
    tap = SSETap(strip_usage_chunk=False)
    tap.feed(CONT_STREAM)
    assert tap.usage.total_tokens == 18  # the final usage, not the first chunk's 15


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(USAGE_STREAM)), max_size=12))
def test_tap_any_chunking_gives_the_same_output(cuts):
    cuts = sorted(set(cuts))
    pieces = [USAGE_STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(USAGE_STREAM)])]
    for strip in (True, False):
        whole = SSETap(strip)
        expect = whole.feed(USAGE_STREAM) + whole.flush()
        tap = SSETap(strip)
        got = b"".join(tap.feed(p) for p in pieces) + tap.flush()
        assert got == expect and tap.usage == whole.usage


def test_tap_crlf_events_and_progress_callback():
    seen = []
    tap = SSETap(True, on_event=seen.append)
    data = b'data: {"choices":[{"delta":{}}]}\r\n\r\ndata: {"choices":[],"usage":{"total_tokens":3}}\r\n\r\ndata: [DONE]\r\n\r\n'
    out = tap.feed(data)
    assert out == b'data: {"choices":[{"delta":{}}]}\r\n\r\ndata: [DONE]\r\n\r\n'
    assert seen == [1, 2] and tap.usage.total_tokens == 3


def test_tap_unterminated_last_event_flushed():
    tap = SSETap(True)
    assert tap.feed(b'data: {"choices":[{"i":1}]}') == b""
    assert tap.flush() == b'data: {"choices":[{"i":1}]}'


@pytest.mark.parametrize(
    ("obj", "expect"),
    [
        (
            {
                "usage": {
                    "prompt_tokens": 30,
                    "total_tokens": 54,
                    "completion_tokens": 24,
                    "prompt_tokens_details": None,
                }
            },
            (30, 24, 54, None),
        ),
        (
            {
                "usage": {
                    "prompt_tokens": 317,
                    "total_tokens": 321,
                    "completion_tokens": 4,
                    "prompt_tokens_details": {"cached_tokens": 256},
                }
            },
            (317, 4, 321, 256),
        ),
        ({"usage": {"prompt_tokens": 10, "total_tokens": 15.0}}, (10, 5, 15, None)),
        ({"usage": {"prompt_tokens": 10}}, None),
        ({"usage": {"total_tokens": float("inf")}}, None),
        ({"usage": {"total_tokens": True}}, None),
        ({"usage": None}, None),
        ([], None),
        # the Responses API: input/output tokens, on the response or on its final stream event
        (
            {
                "object": "response",
                "usage": {
                    "input_tokens": 40,
                    "input_tokens_details": {"cached_tokens": 32, "cache_write_tokens": 0},
                    "output_tokens": 8,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": 48,
                },
            },
            (40, 8, 48, 32),
        ),
        (
            {"type": "response.completed", "response": {"usage": {"input_tokens": 5, "output_tokens": 2}}},
            (5, 2, 7, None),
        ),
        ({"type": "response.created", "response": {"usage": None}}, None),
        ({"usage": {"input_tokens": 5}}, None),
    ],
)
def test_usage_from(obj, expect):
    u = usage_from(obj)
    assert (
        None if u is None else (u.prompt_tokens, u.completion_tokens, u.total_tokens, u.cached_tokens)
    ) == expect


def test_prepare_forward_strips_and_injects():
    p = {
        "model": "m",
        "messages": [],
        "program_id": "x",
        "docker_ids": ["a"],
        "extra_body": {"program_id": "y", "tool_ids": ["t"]},
    }
    out = prepare_forward(p, b"ignored")
    assert json.loads(out.body) == {"model": "m", "messages": []} and not out.stream
    p = {"messages": [], "stream": True, "stream_options": {"foo": 1}}
    out = prepare_forward(p, b"ignored")
    assert (
        json.loads(out.body)["stream_options"] == {"foo": 1, "include_usage": True} and out.strip_usage_chunk
    )
    assert p["stream_options"] == {"foo": 1}  # the client's object is not mutated
    raw = b'{"messages": [], "stream": true, "stream_options": {"include_usage": true}}'
    out = prepare_forward(json.loads(raw), raw)
    assert out.body is raw and not out.strip_usage_chunk
    raw = b'{"messages": [], "extra_body": {"top_k": 2}}'
    assert prepare_forward(json.loads(raw), raw).body is raw
    assert json.loads(
        prepare_forward(
            {"messages": [], "stream": True, "stream_options": {"include_usage": False}}, b""
        ).body
    )["stream_options"] == {"include_usage": True}


def test_program_id_extraction():
    assert extract_program_id({"program_id": 12}, "h", "u") == ("12", "body")
    assert extract_program_id({"extra_body": {"program_id": "e"}}, "h", "u") == ("e", "extra_body")
    assert extract_program_id({}, "h", "u") == ("h", "header")
    assert extract_program_id({}, None, "u") == ("u", "url")
    assert extract_program_id({}, None, None) == ("default", "default")
    with pytest.raises(ProxyError) as e:  # an empty id is refused, not read as "default"
        extract_program_id({"program_id": ""}, None, None)
    assert e.value.status == 400
    with pytest.raises(ProxyError) as e:
        extract_program_id({"program_id": ["x"]}, None, None)
    assert e.value.status == 400
    with pytest.raises(ProxyError):
        extract_program_id({"program_id": "x" * 600}, None, None)


def test_resources_and_validation():
    assert extract_resources({"docker_ids": "a", "extra_body": {"docker_ids": ["b"], "tool_ids": [3]}}) == {
        "docker_ids": ["a", "b"],
        "tool_ids": ["3"],
    }
    with pytest.raises(ProxyError):
        extract_resources({"tool_ids": {"a": 1}})
    validate_chat({"messages": [{"role": "user", "content": "x"}], "stream": None, "tools": []})
    with pytest.raises(ProxyError):
        validate_chat({"messages": [], "tools": {}})


def test_backend_error_bodies():
    oai = json.dumps(
        {"error": {"message": "m", "type": "BadRequestError", "param": None, "code": 400}}
    ).encode()
    assert backend_error_body(400, oai) == (400, None)
    status, body = backend_error_body(500, oai)
    assert status == 502 and json.loads(body)["error"]["code"] == 500
    assert backend_error_body(503, oai) == (503, None)
    status, body = backend_error_body(500, b"<html>oops</html>")
    assert status == 502 and "oops" in json.loads(body)["error"]["message"]


def test_transport_error_mapping():
    """What the proxied traffic raises (aiohttp failures through transport_error) -> the client's status."""
    refused = aiohttp.ClientConnectorError(
        ConnectionKey("b", 80, False, True, None, None, None, None), ConnectionRefusedError(111, "refused"))
    assert translate_transport_error(transport_error(refused), "b").status == 502
    assert translate_transport_error(transport_error(aiohttp.ConnectionTimeoutError("t")), "b").status == 504
    assert translate_transport_error(transport_error(aiohttp.SocketTimeoutError("t")), "b").status == 504
    assert translate_transport_error(transport_error(aiohttp.ServerDisconnectedError()), "b").status == 502


def test_header_filters():
    out = request_headers(
        [
            (b"Host", b"x"),
            (b"Authorization", b"Bearer k"),
            (b"X-Program-Id", b"p"),
            (b"Accept-Encoding", b"gzip"),
            (b"Connection", b"keep-alive"),
        ]
    )
    assert out == [(b"Authorization", b"Bearer k"), (b"accept-encoding", b"identity")]
    h = httpx.Headers(
        [
            ("content-type", "text/event-stream"),
            ("transfer-encoding", "chunked"),
            ("x-request-id", "r"),
            ("server", "uvicorn"),
        ]
    )
    assert response_headers(tuple(h.raw)) == [(b"content-type", b"text/event-stream"), (b"x-request-id", b"r")]


def test_sse_tap_reads_responses_usage_and_never_strips_it():
    created = {"type": "response.created", "response": {"usage": None}}
    done = {"type": "response.completed", "response": {"usage": {"input_tokens": 9, "output_tokens": 3,
                                                                  "total_tokens": 12}}}
    stream = b"".join(
        f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in (created, done)
    )
    delta = {"type": "response.output_text.delta", "delta": "hi"}
    stream = stream.replace(b"event: response.completed", f"event: {delta['type']}\ndata: {json.dumps(delta)}\n\n"
                            "event: response.completed".encode())
    seen: list[int] = []
    tap = SSETap(strip_usage_chunk=True, on_event=seen.append)
    assert tap.feed(stream) + tap.flush() == stream
    assert tap.usage is not None and (tap.usage.prompt_tokens, tap.usage.total_tokens) == (9, 12)
    assert seen == [1] and tap.events == 1  # only the delta carries text (first token, progress)


def test_url_credentials_become_a_basic_authorization_header() -> None:
    """user:password in a backend URL leave the URL and travel as RFC 7617 Basic credentials (UTF-8)."""
    import base64

    client = BackendClient(connect_timeout=1.0, read_timeout=1.0)
    url, basic = client._split_credentials("http://alice:p%C3%A4ss@127.0.0.1:9/v1")
    assert str(url) == "http://127.0.0.1:9/v1"
    assert basic == "Basic " + base64.b64encode("alice:päss".encode()).decode()
    assert client._split_credentials("http://127.0.0.1:9/v1") == (url, None)
