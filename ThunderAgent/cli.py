"""`thunderagent` / `python -m ThunderAgent`: run the proxy.

The flags are generated from ThunderAgent.config.Config, one per field (`foo_bar` -> `--foo-bar`, help
and choices from the field's metadata), so adding a Config field adds a flag. Types follow the
annotation: bool -> a switch (`--profile`; `--no-x` for switches that default to on), int/float/str,
`str | None`, `tuple[str, ...]` -> a comma-separated list. Bad values end the program with one readable
line and exit status 2.

`main` imports uvicorn and the app (FastAPI, aiohttp, prometheus) only once the flags are valid, so that
`--help` and a bad flag answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib.util
import logging
import os
import socket
import sys
import types
import typing
from typing import Any, NoReturn, get_args, get_origin

from ThunderAgent import __version__
from ThunderAgent.config import Config
from ThunderAgent.logsafe import install
from ThunderAgent.policy.settings import InvalidSetting

EPILOG = """\
Binding: the proxy listens on 127.0.0.1 by default (upstream: 0.0.0.0), so only this machine can reach
it. To expose it to other hosts pass --host 0.0.0.0 (or one interface's address) and set --admin-token
so that only you can release programs. Point OpenAI clients at http://<host>:<port>/v1 and send a
program_id per agent trajectory (body, extra_body, X-Program-Id header, or base URL
http://<host>:<port>/p/<program_id>/v1).
"""


# Idle client connections are kept this long (uvicorn's default is 5 s). Longer than HTTP clients' own
# pool expiry (httpx/OpenAI SDK: 5 s), so the client closes an idle connection first and never sends a
# request into one the proxy is closing at that moment.
SERVER_KEEPALIVE = 65


class CliError(ValueError):
    """A bad flag or flag value: one line naming it."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one readable line, no usage dump
        raise CliError(f"{message} (see thunderagent --help)")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(underlying type, optional?) of a field annotation."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _csv_list(text: str) -> tuple[str, ...]:
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list with at least one item")
    return items


def _number(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None

    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="thunderagent",
        description="ThunderAgent: a program-aware, OpenAI-compatible scheduling proxy in front of vLLM/SGLang.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"thunderagent {__version__}")
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        if not f.metadata.get("flag", True):
            continue
        tp, optional = _base_type(hints[f.name])
        help_ = f.metadata.get("help", "")
        default = f.default
        kw: dict[str, Any] = {"dest": f.name, "default": default}
        if "choices" in f.metadata:
            kw["choices"] = list(f.metadata["choices"])
        if tp is bool:
            if default:
                p.add_argument(
                    _flag(f.name), action=argparse.BooleanOptionalAction, help=f"{help_} (default: on)", **kw
                )
            else:
                p.add_argument(_flag(f.name), action="store_true", help=help_, **kw)
            continue
        if get_origin(tp) is tuple:
            shown = ",".join(default) if isinstance(default, tuple) else default
            p.add_argument(
                _flag(f.name), type=_csv_list, metavar="A,B,...", help=f"{help_} (default: {shown})", **kw
            )
            continue
        if tp in (int, float):
            kw["type"] = _number(tp)
        elif tp is not str:
            continue  # a type the command line cannot express (e.g. dicts): not a flag
        shown = "unset" if default is None and optional else default
        metavar = None if "choices" in kw else (f.name.upper() if tp is str else tp.__name__.upper())
        p.add_argument(_flag(f.name), metavar=metavar, help=f"{help_} (default: {shown})", **kw)
    return p


def validate(cfg: Config) -> None:
    """Semantic checks on a parsed Config; raises CliError with one line naming the problem."""
    if not 0 < cfg.port < 65536:
        raise CliError(f"--port {cfg.port} is not a valid TCP port (1-65535)")
    if not cfg.backends:
        raise CliError("--backends needs at least one URL")
    for url in cfg.backends:
        if not (url.startswith("http://") or url.startswith("https://")) or len(url.split("://", 1)[1]) == 0:
            raise CliError(f"--backends: {url!r} is not an http(s):// URL")
    for name in ("metrics_interval", "scheduler_interval", "proxy_connect_timeout", "health_interval", "probe_timeout"):
        if getattr(cfg, name) <= 0:
            raise CliError(f"{_flag(name)} must be > 0, got {getattr(cfg, name)}")
    for name in ("proxy_read_timeout", "idle_ttl", "acting_token_weight", "resume_timeout", "no_backend_grace"):
        if getattr(cfg, name) < 0:
            raise CliError(f"{_flag(name)} must be >= 0, got {getattr(cfg, name)}")
    if cfg.max_body_bytes <= 0:
        raise CliError(f"--max-body-bytes must be > 0, got {cfg.max_body_bytes}")
    for name in ("max_response_bytes", "max_header_bytes", "max_headers", "header_timeout"):
        if getattr(cfg, name) <= 0:
            raise CliError(f"{_flag(name)} must be > 0, got {getattr(cfg, name)}")
    if cfg.max_metrics_bytes <= 0:
        raise CliError(f"--max-metrics-bytes must be > 0, got {cfg.max_metrics_bytes}")
    if cfg.max_programs <= 0:
        raise CliError(f"--max-programs must be > 0, got {cfg.max_programs}")
    if cfg.admin_token is not None and not cfg.admin_token:
        raise CliError("--admin-token must not be empty")
    if cfg.reclaim == "docker" and importlib.util.find_spec("docker") is None:
        # the Docker SDK is an extra: a proxy-only install does not carry it
        raise CliError("--reclaim docker needs the Docker SDK, which comes with thunderbench's 'docker' extra: "
                       "pip install 'thunderbench[docker]'")
    try:  # the policy's settings check their own ranges (watermarks, decay, tr modes, cost limits, ...)
        cfg.policy_settings()
    except InvalidSetting as e:
        raise CliError(f"{_flag(e.field)} {e.problem}") from None


ADMIN_TOKEN_ENV = "THUNDERAGENT_ADMIN_TOKEN"


def admin_token(flag: str | None, path: str | None) -> str | None:
    """The admin token: --admin-token-file, else --admin-token, else $THUNDERAGENT_ADMIN_TOKEN (unset or
    empty: none). A file that cannot be read or holds no token is an error (CliError)."""
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                token = f.readline().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(f"--admin-token-file {path}: cannot read it ({type(e).__name__}: {e.strerror if isinstance(e, OSError) else e})") from None
        if not token:
            raise CliError(f"--admin-token-file {path}: the file holds no token (its first line is empty)")
        return token
    if flag is not None:
        return flag
    return os.environ.get(ADMIN_TOKEN_ENV) or None


def config_from_flags(argv: list[str]) -> Config:
    """Command-line flags -> a validated Config, for the proxy's own command line and for anything that
    describes a proxy by its flags (a recipe's [proxy].args). Raises CliError (one line) on a bad flag."""
    ns = vars(build_parser().parse_args(argv))
    names = {f.name for f in dataclasses.fields(Config)}
    ns["admin_token"] = admin_token(ns.get("admin_token"), ns.get("admin_token_file"))
    cfg = Config(**{k: v for k, v in ns.items() if k in names})
    validate(cfg)
    return cfg


def parse_config(argv: list[str] | None = None) -> Config:
    """argv (default: sys.argv[1:]) -> a validated Config; exits 2 with one line on a bad flag."""
    try:
        return config_from_flags(sys.argv[1:] if argv is None else argv)
    except CliError as e:
        _fail(f"{e}")


def check_port(host: str, port: int) -> None:
    """CliError when host:port cannot be bound (taken, or an address this machine does not have), so that a
    taken port is one line and exit 2 before start-up rather than uvicorn's log lines and exit 3."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise CliError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is not "taken"
        try:
            s.bind(addr)
        except OSError as e:
            why = "already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            raise CliError(f"cannot listen on {host}:{port}: {why} (stop what holds it or pick another --port)") \
                from None


def _fail(message: str) -> NoReturn:
    print(f"thunderagent: error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(argv)
    try:
        check_port(cfg.host, cfg.port)
    except CliError as e:
        _fail(str(e))
    level = cfg.log_level.upper() if cfg.log_level != "trace" else "DEBUG"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install()  # program ids come from clients: one log record stays one line
    import uvicorn

    from ThunderAgent.app import create_app
    from ThunderAgent.httpserver import bounded_protocol

    try:
        app = create_app(cfg)
    except (ValueError, ImportError, OSError) as e:  # a value only the app can judge: still one line, exit 2
        _fail(str(e))
    try:
        uvicorn.run(
            app,
            host=cfg.host,
            port=cfg.port,
            log_level=cfg.log_level,
            access_log=cfg.log_level in ("debug", "trace"),
            timeout_keep_alive=SERVER_KEEPALIVE,
            http=bounded_protocol(cfg.max_header_bytes, cfg.max_headers, cfg.header_timeout),
        )
    except OSError as e:  # e.g. the port taken between the check and the bind
        _fail(f"cannot serve on {cfg.host}:{cfg.port}: {e}")
