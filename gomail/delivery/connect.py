"""Opening smarthost connections: endpoints, TLS options, timeouts."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.python.failure import Failure

from gomail.delivery.client import ConnectionFailure, RelayProtocol
from gomail.delivery.relay import Smarthost
from gomail.settings import Config, DeliverySettings


def smarthosts_from(config: Config) -> list[Smarthost]:
    """C{forwardProviders} when given, else C{forwardHost}/C{forwardPort} with the forward* credentials."""
    if config.forwardProviders:
        return [Smarthost(p.host, p.port, p.username, p.password, p.ssl, p.priority)
                for p in config.forwardProviders]
    return [Smarthost(config.forwardHost, config.forwardPort, config.forwardUsername, config.forwardPassword,
                      config.forwardSSL, 0)]


def tls_options(host: str, settings: DeliverySettings) -> Any:
    """Client TLS options: verified against the system CAs (or tlsCAFile) unless tlsVerify is off."""
    if not settings.tlsVerify:
        return ssl.CertificateOptions(verify=False)
    if settings.tlsCAFile:
        with open(settings.tlsCAFile, "rb") as f:
            return ssl.optionsForClientTLS(host, trustRoot=ssl.Certificate.loadPEM(f.read()))
    return ssl.optionsForClientTLS(host)


def make_connector(reactor: Any, identity: str, settings: DeliverySettings) -> Callable[[Smarthost], Deferred]:
    """A function opening a ready L{RelayProtocol} to a smarthost, or failing with L{ConnectionFailure}."""

    def connect(smarthost: Smarthost) -> Deferred:
        options = tls_options(smarthost.host, settings)
        endpoint: Any = HostnameEndpoint(reactor, smarthost.host.encode("idna"), smarthost.port,
                                         timeout=settings.connectTimeout)
        if smarthost.implicit_tls:
            endpoint = wrapClientTLS(options, endpoint)
        protocol = RelayProtocol(identity, reactor, settings.commandTimeout, smarthost.username,
                                 smarthost.password, tls_context=None if smarthost.implicit_tls else options,
                                 implicit_tls=smarthost.implicit_tls)
        d = connectProtocol(endpoint, protocol)
        d.addCallback(lambda _: protocol.ready)
        d.addTimeout(settings.connectTimeout + settings.commandTimeout, reactor)
        d.addErrback(_as_connection_failure, smarthost)
        return d

    return connect


def _as_connection_failure(failure: Failure, smarthost: Smarthost) -> Failure:
    if failure.check(ConnectionFailure):
        return failure
    return Failure(ConnectionFailure(451, f"4.4.1 Cannot reach {smarthost}: {failure.getErrorMessage()}"))
