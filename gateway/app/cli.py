"""`gateway`: the command line. Every option is also a GATEWAY_* environment variable."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any, get_args

from pydantic import ValidationError

from gateway import __version__
from gateway.app.logs import configure_logging
from gateway.app.server import StartupError, serve
from gateway.config.settings import GatewaySettings

logger = logging.getLogger("gateway")


def _add_settings_options(parser: argparse.ArgumentParser) -> None:
    for name, field in GatewaySettings.model_fields.items():
        option = "--" + name.replace("_", "-")
        env = "GATEWAY_" + name.upper()
        help_text = f"{field.description} [env {env}; default: {field.default}]"
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": help_text}
        if field.annotation is bool:
            parser.add_argument(option, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        choices = get_args(field.annotation)
        if choices and all(isinstance(c, str) for c in choices):
            kwargs["choices"] = choices
        parser.add_argument(option, metavar=name.split("_")[-1].upper(), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    serve_parser = argparse.ArgumentParser(
        prog="gateway serve",
        description="Serve every model of a Triton-layout repository over HTTP and gRPC.",
    )
    _add_settings_options(serve_parser)
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="An Open Inference Protocol (KServe V2) gateway for ONNX models.",
        epilog="Options of `gateway serve`:\n"
        + serve_parser.format_help().split("options:", 1)[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve_command = commands.add_parser("serve", help=serve_parser.description)
    serve_command.description = serve_parser.description
    _add_settings_options(serve_command)
    return parser


def _settings(args: argparse.Namespace) -> GatewaySettings:
    given = {
        name: value
        for name in GatewaySettings.model_fields
        if (value := getattr(args, name, None)) is not None
    }
    return GatewaySettings(**given)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        settings = _settings(args)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        print(f"gateway: invalid settings: {problems}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        if settings.event_loop == "uvloop":
            import uvloop

            uvloop.run(serve(settings))
        else:
            asyncio.run(serve(settings))
    except StartupError as exc:
        logger.error("cannot start: %s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
