# -*- test-case-name: tests.test_plugins_smtp -*-
"""
The SMTP sessions' side of L{gomail.interfaces.ISMTPHook} and
L{gomail.interfaces.IHeaderFilter} plugins: ask the hooks in order, turn
their verdicts into replies, and a hook's failure into C{451 4.3.0}.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from gomail.extension.runner import HookFailed, HookRunner
from gomail.plugin import MessageView, SessionView, Verdict
from gomail.smtp.headeredit import HeaderStripper

Refusal = tuple[int, str, str]
#: What the client hears when a hook failed or timed out: nothing is queued, it tries again.
HOOK_FAILED: Refusal = (451, "4.3.0", "Local error in processing, try again later")


class SMTPHooks:
    """The enabled SMTP hooks and header filters, in configuration order."""

    log = Logger()

    def __init__(self, runner: HookRunner | None = None, hooks: list[tuple[str, Any]] | None = None,
                 filters: list[tuple[str, Any]] | None = None) -> None:
        self.runner = runner
        self.hooks = hooks or []
        self.filters = filters or []
        #: Whether any hook is enabled (sessions skip all of this when not).
        self.active = bool(self.hooks)

    async def refusal(self, stage: str, session: Any, *args: Any) -> Refusal | None:
        """Ask each hook's C{stage} method; the first refusal, L{HOOK_FAILED}, or None to go on."""
        refusal, _ = await self._ask(stage, session, args)
        return refusal

    async def end_of_data(self, session: Any, message: MessageView) -> tuple[Refusal | None, list[tuple[str, str]]]:
        """The end-of-data verdict, and the header fields the accepting hooks add (in order)."""
        return await self._ask("end_of_data", session, (message,))

    async def _ask(self, stage: str, session: Any, args: tuple) -> tuple[Refusal | None, list[tuple[str, str]]]:
        assert self.runner is not None  # active: built with a runner
        view = SessionView(session)
        headers: list[tuple[str, str]] = []
        for name, hook in self.hooks:
            try:
                verdict = await self.runner.call(name, getattr(hook, stage), view, *args)
            except HookFailed:
                return HOOK_FAILED, []
            if verdict is None:
                continue
            if not isinstance(verdict, Verdict):
                self.log.error("plugin {plugin}: {stage} returned {kind}, not None or a Verdict",
                               plugin=name, stage=stage, kind=type(verdict).__name__)
                self.runner.stats[name].errors += 1
                return HOOK_FAILED, []
            if verdict.refused:
                self.log.info("plugin {plugin} refused at {stage} from {client}: {code} {status} {text}",
                              plugin=name, stage=stage, client=view.client_address, code=verdict.code,
                              status=verdict.status, text=verdict.text)
                return (verdict.code, verdict.status, verdict.text), []
            headers.extend(verdict.headers)
        return None, headers

    def stripper(self) -> HeaderStripper | None:
        """A header stripper for one message, or None when no filter is enabled."""
        if not self.filters:
            return None
        runner = self.runner
        assert runner is not None
        filters = self.filters

        def drops(name: str) -> bool:
            return any(runner.call_now(plugin, f.drops, name, default=False) for plugin, f in filters)

        return HeaderStripper(drops)


def header_block(headers: list[tuple[str, str]]) -> bytes:
    """Header fields as the lines put at the top of a message (checked by L{gomail.plugin.accept})."""
    return b"".join(f"{name}: {value}\r\n".encode() for name, value in headers)
