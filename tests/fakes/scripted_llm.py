"""A scripted OpenAI-compatible model for the agent tests: a real HTTP server on 127.0.0.1.

It answers `POST /v1/chat/completions` with a fixed sequence of tool calls per SWE-bench instance, so a
real agent library (OpenHands SDK, mini-swe-agent) solves a toy fixture in a few steps. The server is
stateless per request: it finds the instance by the problem statement in the request's messages and
the step by counting the assistant messages already in the conversation, so many instances can run
concurrently and retries repeat the same step.

The same script works for both agents: the tool name is taken from the request's `tools` (`terminal` +
`finish` for OpenHands, `bash` for mini-swe-agent, whose submission is an `echo
COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT` command). OpenHands in text mode (`native_tool_calling=False`: tools
described in the system prompt, no `tools` field) is answered in its text format, `<function=terminal>
<parameter=command>...</parameter></function>`.

Everything it receives is recorded (`requests`, `releases`), so tests can check what reached the engine
(behind ThunderAgent the proxy strips `program_id`, so that is observed at the proxy instead).
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable

from harness.fixtures.make_toy import TOY_REPOS, ToyRepo


@dataclass(frozen=True)
class Action:
    """One scripted model turn: run a shell command, finish (submit), or fail with an HTTP error."""

    kind: str  # "bash" | "finish" | "say" (text, no tool call) | "error"
    command: str = ""
    status: int = 400
    thought: str = ""


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    t: float
    instance_id: str | None
    step: int | None
    status: int


def fix_command(toy: ToyRepo) -> str:
    """A one-line shell command that applies the toy's gold fix with Python (base64 avoids quoting)."""
    src = (
        "import pathlib\n"
        f"p = pathlib.Path({toy.fix.path!r})\n"
        "t = p.read_text()\n"
        f"assert t.count({toy.fix.old!r}) == 1, 'fix target not found'\n"
        f"p.write_text(t.replace({toy.fix.old!r}, {toy.fix.new!r}))\n"
        "print('patched', p)\n"
    )
    # this interpreter, not whatever `python3` the PATH of the machine has (the command runs on the host)
    return f"echo {base64.b64encode(src.encode()).decode()} | base64 -d | {shlex.quote(sys.executable)}"


def solve_script(toy: ToyRepo) -> list[Action]:
    """Read the buggy file, fix it, look at the diff, finish: four model calls."""
    return [
        Action("bash", f"cat {toy.fix.path}", thought=f"Let me look at {toy.fix.path}."),
        Action("bash", fix_command(toy), thought="I will apply the fix."),
        Action("bash", "git diff --no-color", thought="Check the change."),
        Action("finish", thought="The bug is fixed."),
    ]


def chatty_script(toy: ToyRepo) -> list[Action]:
    """solve_script with a text-only answer after the fix: the agent must carry on (OpenHands: its
    fake-user nudge; mini-swe-agent: its format-error notice) and still finish."""
    steps = solve_script(toy)
    return steps[:2] + [Action("say", thought="I have fixed the bug.")] + steps[2:]


def failing_script(toy: ToyRepo, after: int = 1, status: int = 400) -> list[Action]:
    """Starts like solve_script, then the model fails with HTTP `status` at call `after` + 1."""
    return solve_script(toy)[:after] + [Action("error", status=status)]


@dataclass
class ScriptedLLM:
    """Start with `with ScriptedLLM(scripts, instances) as llm:`; `llm.base_url` ends in /v1."""

    scripts: dict[str, list[Action]]  # instance_id -> actions
    instances: Iterable[dict[str, Any]] = ()  # rows with instance_id + problem_statement (for matching)
    model: str = "scripted"
    requests: list[Received] = field(default_factory=list)
    releases: list[tuple[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._markers: dict[str, str] = {}
        for row in self.instances:
            first_line = row["problem_statement"].strip().splitlines()[0]
            self._markers[first_line] = row["instance_id"]
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._n = 0

    # --- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> "ScriptedLLM":
        handler = _make_handler(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="scripted-llm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "ScriptedLLM":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def completions(self, instance_id: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/chat/completions")
                    and (instance_id is None or r.instance_id == instance_id)]

    # --- scripting -------------------------------------------------------------------------------------
    def _identify(self, body: dict[str, Any]) -> str | None:
        pid = body.get("program_id")
        for msg in body.get("messages", []):
            if msg.get("role") != "user":
                continue
            text = _text(msg.get("content"))
            for marker, iid in self._markers.items():
                if marker in text:
                    return iid
        for iid in self.scripts:  # direct mode (no proxy): program ids that embed the instance id
            if isinstance(pid, str) and iid in pid:
                return iid
        return None

    def respond(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], str | None, int | None]:
        iid = self._identify(body)
        if iid is None or iid not in self.scripts:
            return 400, _error("scripted model: unknown instance (no matching problem statement)"), iid, None
        step = _turn(body.get("messages", []))
        script = self.scripts[iid]
        action = script[min(step, len(script) - 1)]
        if action.kind == "error":
            return action.status, _error(f"scripted failure at step {step + 1}"), iid, step
        with self._lock:
            self._n += 1
            n = self._n
        if action.kind == "say":  # a text-only answer (no tool call), as real models sometimes give
            return 200, _completion(n, body, self.model, {"role": "assistant", "content": action.thought
                                                          or "I think I am done."}, "stop"), iid, step
        tools = {t.get("function", {}).get("name") for t in body.get("tools") or []}
        if not tools and _text_mode_tools(body) >= {"terminal", "finish"}:  # OpenHands, text-mode tool calls
            name, args = ("finish", {"message": action.thought or "done"}) if action.kind == "finish" \
                else ("terminal", {"command": action.command})
            params = "".join(f"<parameter={k}>{v}</parameter>\n" for k, v in args.items())
            content = (action.thought + "\n\n" if action.thought else "") + f"<function={name}>\n{params}</function>"
            return 200, _completion(n, body, self.model, {"role": "assistant", "content": content}, "stop"), iid, step
        if "terminal" in tools:  # OpenHands
            name, args = ("finish", {"message": action.thought or "done"}) if action.kind == "finish" \
                else ("terminal", {"command": action.command})
        elif "bash" in tools:  # mini-swe-agent
            cmd = "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && git diff --no-color" \
                if action.kind == "finish" else action.command
            name, args = "bash", {"command": cmd}
        else:
            return 400, _error(f"scripted model: no known tool in {sorted(t for t in tools if t)}"), iid, step
        message = {
            "role": "assistant",
            "content": action.thought or None,
            "tool_calls": [{"id": f"call_{n}", "type": "function",
                            "function": {"name": name, "arguments": json.dumps(args)}}],
        }
        return 200, _completion(n, body, self.model, message, "tool_calls"), iid, step


def _text_mode_tools(body: dict[str, Any]) -> set[str]:
    """Tool names a text-mode (prompt-described, `native_tool_calling=False`) request offers: OpenHands lists
    them in the system message as `---- BEGIN FUNCTION #k: <name> ----`."""
    system = next((_text(m.get("content")) for m in body.get("messages", []) if m.get("role") == "system"), "")
    if "<function=" not in system:
        return set()
    return set(re.findall(r"BEGIN FUNCTION #\d+: (\w+)", system))


def _turn(messages: list[dict[str, Any]]) -> int:
    """0-based turn of a request = the environment's replies so far: tool results and user messages after
    the task (a fake-user nudge, mini-swe-agent's format-error notice). Counting replies rather than
    assistant messages also works when a library drops a malformed assistant message from the history."""
    first_user = next((k for k, m in enumerate(messages) if m.get("role") == "user"), len(messages))
    return sum(1 for m in messages[first_user + 1:] if m.get("role") in ("tool", "user"))


def _completion(n: int, body: dict[str, Any], model: str, message: dict[str, Any],
                finish_reason: str) -> dict[str, Any]:
    prompt_tokens = max(1, len(json.dumps(body.get("messages", []))) // 4)
    return {
        "id": f"chatcmpl-scripted-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", model),
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 20, "total_tokens": prompt_tokens + 20},
    }


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _error(message: str, code: int = 400) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


_METRICS = (
    "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
    "# TYPE vllm:num_requests_running gauge\n"
    'vllm:num_requests_running{engine="0",model_name="scripted"} 0.0\n'
    "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
    "# TYPE vllm:num_requests_waiting gauge\n"
    'vllm:num_requests_waiting{engine="0",model_name="scripted"} 0.0\n'
    "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
    "# TYPE vllm:kv_cache_usage_perc gauge\n"
    'vllm:kv_cache_usage_perc{engine="0",model_name="scripted"} 0.0\n'
    "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
    "# TYPE vllm:cache_config_info gauge\n"
    'vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="100000"} 1.0\n'
)


def _make_handler(llm: ScriptedLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            return

        def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            if path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": llm.model, "object": "model",
                                                             "owned_by": "thunderbench"}]})
            elif path in ("/health", "/ping"):
                self._send(200, {})
            elif path == "/metrics":
                self._send(200, _METRICS, "text/plain; version=0.0.4")
            else:
                self._send(404, _error("not found", 404))

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                self._send(400, _error("invalid JSON"))
                return
            now = time.time()
            if path == "/programs/release":
                with llm._lock:
                    llm.releases.append((str(body.get("program_id")), now))
                self._send(200, {"released": True, "program_id": body.get("program_id")})
                return
            if path != "/v1/chat/completions":
                with llm._lock:
                    llm.requests.append(Received(path, body, now, None, None, 404))
                self._send(404, _error(f"scripted model does not serve {path}", 404))
                return
            status, resp, iid, step = llm.respond(body)
            with llm._lock:
                llm.requests.append(Received(path, body, now, iid, step, status))
            if status == 200 and body.get("stream"):
                self._stream(resp, bool((body.get("stream_options") or {}).get("include_usage")))
            else:
                self._send(status, resp)

        def _stream(self, resp: dict[str, Any], include_usage: bool) -> None:
            base = {k: resp[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
            msg = resp["choices"][0]["message"]
            delta = {"role": "assistant", "content": msg["content"],
                     **({"tool_calls": [dict(tc, index=i) for i, tc in enumerate(msg["tool_calls"])]}
                        if msg.get("tool_calls") else {})}
            finish = resp["choices"][0]["finish_reason"]
            chunks = [base | {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
                      base | {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}]
            if include_usage:
                chunks.append(base | {"choices": [], "usage": resp["usage"]})
            data = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            self._send(200, data, "text/event-stream")

    return Handler


def toy_scripts(failing: dict[str, int] | None = None) -> dict[str, list[Action]]:
    """Scripts that solve every toy fixture; `failing` maps instance_id -> call after which it errors."""
    failing = failing or {}
    return {t.instance_id: (failing_script(t, failing[t.instance_id]) if t.instance_id in failing
                            else solve_script(t)) for t in TOY_REPOS}
