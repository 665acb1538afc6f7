"""The daemon's command handler: product/set, product/prepare and feedback, as parsed by the publisher.

Contract with ``MqttPublisher.subscribe_commands`` (which owns parsing and answering): the publisher refuses
what does not parse — bad JSON, wrong types, unknown keys, an id that is not a plain name (``../x``,
``a/b``), payloads over ``mqtt.max_command_bytes`` — without calling this handler, and answers every command
exactly once on ``product/response`` with its ``request_id``: ok when the handler returns, the reason when it
raises ``CommandError``. This handler turns every refusal of the switcher or the feedback recorder
(``LinewatchError``: an unknown product, a damaged bundle, an unknown seq, ...) into a ``CommandError`` with
the reason, so nothing a command says can raise anything else into the publisher's command thread, and no
command touches inspection except through the switcher's frame-boundary swap.

It runs on the publisher's command thread, one command at a time: ``set`` answers once frames are inspected
with the new product (or with why not), ``prepare`` once the product is ready beside the running one.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any

from linewatch.errors import CommandError, LinewatchError
from linewatch.products.feedback import FeedbackRecorder
from linewatch.products.switcher import ProductSwitcher
from linewatch.publish.payloads import Command, FeedbackPayload, ProductCommand

log = logging.getLogger(__name__)


class ProductCommandHandler:
    """``CommandHandler`` for ``MqttPublisher.subscribe_commands`` (see module doc)."""

    def __init__(
        self, switcher: ProductSwitcher, feedback: FeedbackRecorder | None, *, timeout_s: float = 120.0
    ) -> None:
        self.switcher = switcher
        self.feedback = feedback
        self.timeout_s = timeout_s
        self.handled = 0
        self.refused = 0

    def __call__(self, command: Command) -> None:
        self.handled += 1
        try:
            if isinstance(command, FeedbackPayload):
                self._feedback(command)
            elif isinstance(command, ProductCommand):
                self._product(command)
            else:  # the publisher parses only these two models
                raise CommandError(f"unsupported command {type(command).__name__}")
        except CommandError:
            self.refused += 1
            raise
        except LinewatchError as exc:
            self.refused += 1
            raise CommandError(str(exc)) from exc

    def _product(self, command: ProductCommand) -> None:
        product_id = command.product_id
        future: Future[Any]
        if command.action == "prepare":
            future = self.switcher.prepare(product_id)
        else:  # "set"; the publisher fills a missing action from the topic
            future = self.switcher.activate(product_id)
        try:
            future.result(self.timeout_s)
        except FutureTimeoutError:
            raise CommandError(
                f"{command.action} {product_id}: not finished within {self.timeout_s:g} s; it goes on in the "
                "background — the retained product state shows when it is done"
            ) from None

    def _feedback(self, command: FeedbackPayload) -> None:
        if self.feedback is None:
            raise CommandError("feedback is not accepted: this daemon has no journal to label")
        self.feedback.record(command.seq, command.label, command.note)
