# -*- test-case-name: tests.test_relay_timeouts -*-
"""Opening smarthost connections: endpoints, TLS options, timeouts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import error, ssl
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.python.failure import Failure

from gomail.configschema import Config, DeliverySettings
from gomail.delivery.client import ConnectionFailure, RelayProtocol
from gomail.delivery.relay import Smarthost


def smarthosts_from(config: Config) -> list[Smarthost]:
    """C{forwardProviders} when given, else C{forwardHost}/C{forwardPort} with the forward* credentials."""
    if config.forwardProviders:
        return [Smarthost(p.host, p.port, p.username, p.password, p.ssl, p.priority)
                for p in config.forwardProviders]
    return [Smarthost(config.forwardHost, config.forwardPort, config.forwardUsername, config.forwardPassword,
                      config.forwardSSL, 0)]


def tls_options(host: str, settings: DeliverySettings, verify: bool | None = None) -> Any:
    """
    Client TLS options: verified against the system CAs (or tlsCAFile) unless
    tlsVerify (or C{verify}, when given) is off.
    """
    if not (settings.tlsVerify if verify is None else verify):
        return ssl.CertificateOptions(verify=False)
    if settings.tlsCAFile:
        with open(settings.tlsCAFile, "rb") as f:
            return ssl.optionsForClientTLS(host, trustRoot=ssl.Certificate.loadPEM(f.read()))
    return ssl.optionsForClientTLS(host)


def make_connector(reactor: Any, identity: str, settings: DeliverySettings,
                   verify: bool | None = None) -> Callable[[Smarthost], Deferred]:
    """
    A function opening a ready L{RelayProtocol} to a smarthost, or failing with
    L{ConnectionFailure} (whose text names the step that failed or timed out).
    The TCP connect is bounded by C{connectTimeout}, each reply by
    C{commandTimeout}, and getting ready as a whole by their sum; cancelling
    the Deferred drops whatever is under way.
    """

    def connect(smarthost: Smarthost) -> Deferred:
        checks = verify if smarthost.verify is None else smarthost.verify
        options = None if smarthost.plaintext else tls_options(smarthost.tls_name or smarthost.host, settings,
                                                                 checks)
        endpoint: Any = HostnameEndpoint(reactor, smarthost.host.encode("idna"), smarthost.port,
                                         timeout=settings.connectTimeout)
        if smarthost.implicit_tls and options is not None:
            endpoint = wrapClientTLS(options, endpoint)
        protocol = RelayProtocol(identity, reactor, settings.commandTimeout, smarthost.username,
                                 smarthost.password, tls_context=None if smarthost.implicit_tls else options,
                                 require_tls=smarthost.require_tls, implicit_tls=smarthost.implicit_tls,
                                 data_timeout=settings.dataTimeout)
        # Whether a TLS session here checks the certificate (what "verified" means in the logs and metrics).
        protocol.verifies = options is not None and (settings.tlsVerify if checks is None else checks)
        bound = settings.connectTimeout + settings.commandTimeout

        def give_up(failure: ConnectionFailure) -> None:
            if protocol.transport is None:
                connecting.cancel()  # the TCP connect is still under way
            else:
                protocol.abort(failure)

        def cancel(_: Deferred) -> None:
            cancelled.append(True)
            give_up(ConnectionFailure(451, f"4.4.1 Connecting to {smarthost} cancelled at {protocol.step}"))

        def too_slow() -> None:
            timed_out.append(True)
            give_up(ConnectionFailure(451, f"4.4.2 {smarthost}: timeout after {bound:g} s waiting for "
                                           f"{protocol.step} (not ready within connectTimeout + commandTimeout)"))

        def settle(result: Any) -> None:
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure):
                if not ready.called:
                    ready.errback(CancelledError() if cancelled else _as_connection_failure(
                        result, smarthost, settings, bound if timed_out else None))
            elif ready.called:
                result.close()  # ready after all, but no longer wanted
            else:
                ready.callback(result)

        cancelled: list[bool] = []
        timed_out: list[bool] = []
        ready: Deferred = Deferred(cancel)
        connecting = connectProtocol(endpoint, protocol)
        connecting.addCallback(lambda _: protocol.ready)
        timer = reactor.callLater(bound, too_slow)
        connecting.addBoth(settle)
        return ready

    return connect


def _as_connection_failure(failure: Failure, smarthost: Smarthost, settings: DeliverySettings,
                           bound: float | None) -> Failure:
    """The L{ConnectionFailure} for C{failure}, saying why (C{bound}: the overall limit ran out)."""
    if failure.check(ConnectionFailure):
        return failure
    if bound is not None:
        why = f"timeout after {bound:g} s waiting for connect"
    elif failure.check(error.TimeoutError):
        why = f"timeout after {settings.connectTimeout:g} s waiting for connect"
    else:
        why = failure.getErrorMessage() or type(failure.value).__name__
    return Failure(ConnectionFailure(451, f"4.4.1 Cannot reach {smarthost}: {why}"))
