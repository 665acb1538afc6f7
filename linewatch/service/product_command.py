"""``linewatch product set|prepare ID``: switch the running daemon's product over MQTT.

Reads the station id and the broker settings from the config (``--config``), publishes the command on
``<prefix>/<station>/product/set`` (or ``product/prepare``) with a request id and waits for the daemon's
answer on ``product/response``. Prints it; exits 0 when the daemon carried it out, 1 when it refused (the
reason is printed: unknown product, damaged bundle, ...), 3 when no answer came (broker unreachable or no
daemon listening), 2 for a bad config or product id.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

from pydantic import ValidationError

from linewatch.config import DEFAULT_CONFIG_PATH, format_problems, load_settings
from linewatch.errors import ConfigError, PublishError
from linewatch.publish.mqtt import send_command
from linewatch.publish.payloads import ProductCommand

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_NO_ANSWER = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["set", "prepare"],
                        help="set: activate at the next frame boundary (preparing first if needed); "
                        "prepare: load, verify and warm up beside the running product")
    parser.add_argument("product_id", metavar="ID", help="product id (a bundle directory in products.dir)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH,
                        help=f"the daemon's config file (default {DEFAULT_CONFIG_PATH}): station id, "
                        "broker")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="seconds to wait for the answer (default: products.command_timeout_s + 10)")


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(format_problems(exc), file=sys.stderr)
        print(f"linewatch product: invalid configuration {args.config}", file=sys.stderr)
        return EXIT_USAGE
    try:
        command = ProductCommand(action=args.action, product_id=args.product_id,
                                 request_id=f"cli-{uuid.uuid4().hex}")
    except ValidationError as exc:
        reason = "; ".join(str(e["msg"]) for e in exc.errors(include_url=False))
        print(f"linewatch product: {args.product_id!r} is not a product id: {reason}", file=sys.stderr)
        return EXIT_USAGE
    timeout_s = args.timeout if args.timeout is not None else settings.products.command_timeout_s + 10.0
    station = settings.station.id
    try:
        answer = send_command(settings.mqtt, station, args.action, command, timeout_s=timeout_s)
    except PublishError as exc:
        print(f"linewatch product: {exc}", file=sys.stderr)
        return EXIT_NO_ANSWER
    if answer.ok:
        done = "active" if args.action == "set" else "prepared"
        print(f"{station}: {args.product_id} {done} (request {answer.request_id})")
        return EXIT_OK
    print(f"{station}: {args.action} {args.product_id} refused: {answer.error}", file=sys.stderr)
    return EXIT_REFUSED
