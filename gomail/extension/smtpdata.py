# -*- test-case-name: tests.test_plugins_smtp -*-
"""The end-of-data hooks of a message being received: their verdict, and their header fields put on top."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from gomail.extension.smtphooks import Refusal, header_block
from gomail.plugin import MessageView

log = Logger()
#: When the header fields cannot be put on the message (the disk failed): the client tries again.
NOT_STORED: Refusal = (451, "4.3.0", "Local error in processing; message not accepted, try again later")


async def plugin_verdict(session: Any, message: Any, sender: str, recipients: list[str]) -> Refusal | None:
    """
    Ask the end-of-data hooks about C{message} (an L{gomail.spool.incoming.IncomingMessage}
    not yet committed); when they accept, put the header fields they add on
    top of it. Returns the refusal to answer with, or None to commit.
    """
    await message.settle()
    view = MessageView(message.id, sender, tuple(recipients), message.size, message.open_content)
    refusal, headers = await session.server.hooks.end_of_data(session, view)
    if refusal is not None or not headers:
        return refusal
    try:
        await message.prepend(header_block(headers))
    except Exception:  # noqa: BLE001 -- any local failure: 451, the client retries; abort cleans up
        log.failure("could not add plugin header fields to {queue_id}", queue_id=message.id)
        return NOT_STORED
    return None
