# -*- test-case-name: tests.test_delivery_queue -*-
"""The contracts between gomail's parts (and for plugins)."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IDeliveryAgent(Interface):
    """Something that can deliver a queued message to some of its recipients."""

    name = Attribute("A short name for logs and metrics, such as 'mailbox' or 'relay'.")

    def deliver(envelope, message_path, recipients):
        """
        Deliver the message whose content is at C{message_path} to C{recipients}
        (a list of L{gomail.spool.envelope.Recipient}, all pending).

        @return: a Deferred firing with a dict mapping each recipient address to
            C{(code, text)}: 2xx delivered, 4xx try again later, 5xx permanent
            failure. It fails only for a fault of the agent itself, which counts
            as a temporary failure of every recipient.
        """


class IQueueConsumer(Interface):
    """Something that takes queued messages and sees them delivered."""

    def enqueue(envelope):
        """
        A committed message is waiting (newly received, or found at start-up).
        Must be idempotent: the same id may be offered twice.
        """


class ISpoolWriter(Interface):
    """
    Runs the spool's durable jobs (L{gomail.spool.jobs}) in batches, each
    batch's files and directories fsynced before any of its jobs is reported.
    Implementations: L{gomail.spool.writer.BatchWriter} (a thread of this
    process), a lane of L{gomail.spool.process.WriterProcess} (the writer's
    child process, over AMP), L{gomail.spool.writer.ImmediateWriter} (at
    once, for tests and tools).
    """

    in_process = Attribute(
        "True when jobs run in this process: then (only) a job may be handed a file descriptor of it.")

    def run(job, **arguments):
        """
        Run C{job(files, **arguments)} (one of the functions of
        L{gomail.spool.jobs}; C{files} is the writer's
        L{gomail.spool.jobs.SpoolFiles}).

        @return: a Deferred firing with the job's result once the job's
            changes are durable. It fails with the job's own exception
            (C{OSError} and its subclasses with their errno,
            L{gomail.spool.integrity.CorruptContent},
            L{gomail.spool.envelope.EnvelopeError}, C{ValueError},
            C{KeyError}), with C{OSError} when the batch's directory fsync
            failed (the change may not be durable), or with
            L{gomail.spool.process.WriterGone} when a writer process exited
            before it answered (the job may or may not have been done).
        """


# -- extension points for plugins (docs/plugins.md) ---------------------------------------
#
# A hook may answer with a value, a Deferred or a coroutine. Every call is
# bounded by plugins.timeout; a hook that raises or times out gives the
# client a temporary error (SMTP 451 4.3.0, auth_http a temporary failure)
# and is logged and counted under the plugin's name.


class IGomailPlugin(Interface):
    """
    What C{twisted.plugin.getPlugins} finds in the C{gomail.plugins} package
    (and the C{plugins.path} directories): a named factory of one extension
    object. Made with L{gomail.plugin.plugin}.
    """

    name = Attribute("The name operators enable it by: [plugins.<name>].")
    description = Attribute("One line for `gomail plugins list`.")

    def build(settings, context):
        """
        Check C{settings} (a L{gomail.plugin.Settings}: the plugin's own table)
        and return the extension object, which provides one or more of the
        interfaces below.

        @raise gomail.plugin.PluginConfigError: naming the bad key.
        """


class ISMTPHook(Interface):
    """
    SMTP policy at each stage of a session. Each method receives a read-only
    L{gomail.plugin.SessionView} and returns None (go on), or a
    L{gomail.plugin.Verdict} from L{gomail.plugin.reject} (5xx with its text)
    or L{gomail.plugin.defer} (4xx). Hooks run in the configuration's order;
    the first refusal is the answer and later hooks are not asked.
    L{gomail.plugin.SMTPHook} accepts everything: subclass it and override
    what you need.
    """

    def connect(session):
        """A client connected (before the banner): a refusal closes the connection after the reply."""

    def helo(session, name):
        """HELO or EHLO with C{name}: a refusal answers the command and the client may try again."""

    def authenticated(session, user):
        """SMTP AUTH succeeded as C{user} (canonical name): a refusal turns the success into that reply."""

    def mail_from(session, sender):
        """MAIL FROM: C{sender} is the address ("" for the null sender), after gomail's own checks."""

    def rcpt_to(session, recipient):
        """RCPT TO: C{recipient}, accepted by gomail's own checks (relay rules, known users)."""

    def end_of_data(session, message):
        """
        The whole message arrived (C{message}: a L{gomail.plugin.MessageView};
        its content is on disk or in memory, read it with C{message.open()}).
        Besides refusing, L{gomail.plugin.accept} with C{headers} adds header
        fields at the top of the message before it is queued.
        """


class IHeaderFilter(Interface):
    """Header fields removed from every message as it streams in (no message is held in memory for it)."""

    def drops(name):
        """Whether the header field C{name} (lower case, no colon) is removed. Called once per field: be quick."""


class IRoutedDeliveryAgent(IDeliveryAgent):
    """A delivery agent that takes the recipients of some domains (before the built-in local and relay agents)."""

    domains = Attribute("The recipient domains (canonical, lower case) this agent delivers.")


class IDeliveryObserver(Interface):
    """Hears of what happens to queued messages (for notifications): never slows delivery."""

    def delivery_event(event):
        """
        C{event}: a L{gomail.plugin.DeliveryEvent} (C{queued}, C{delivered},
        C{deferred}, C{bounced} or C{failed}). Called on the reactor: return
        quickly; a failure is logged and counted, never seen by delivery.
        """


class IAuthSource(Interface):
    """
    Another credential source the login chain consults for names the user
    database does not hold (an LDAP directory, an HTTP user service). The
    blacklist, lockout and equal-time rules apply around it as around the
    database.
    """

    def authenticate(name, password, protocol, client):
        """
        @return: (or a Deferred of) a L{gomail.plugin.SourceUser} when
            C{name}/C{password} are right; None when wrong or unknown here.
            Raising (or a timeout) is a temporary failure: the login is
            answered "try again later", never let in.
        """


class IBackendStrategy(Interface):
    """Picks the nginx backend (C{Auth-Server}/C{Auth-Port}) for a login."""

    def choose(user, protocol, client, backends):
        """
        @param backends: the healthy configured backends of C{protocol}
            (L{gomail.configschema.Backend}: C{address}, C{port}).
        @return: one of C{backends}, or None for the built-in strategy's pick.
        """


class IServiceProvider(Interface):
    """Contributes whole services (a listener, a protocol) to gomail's MultiService."""

    def services(context):
        """@return: a list of C{twisted.application.service.IService}, started after gomail's own parts."""


class IMailboxNotices(Interface):
    """
    In-process news that a user's Maildir changed (handed to plugins as
    C{ServiceContext.notices}): publishers call L{notify}, IMAP's IDLE
    sessions L{subscribe}.
    """

    def subscribe(address, callback):
        """
        Call C{callback(folder)} in the reactor for each notice about
        C{address}'s Maildir. @return: a function ending the subscription,
        or None when the Maildir has as many listeners as allowed.
        """

    def notify(address, folder="INBOX"):
        """Tell C{address}'s listeners that C{folder} changed: @return: how many were told."""
