"""
Mail access: the local Maildirs that delivery fills (L{gomail.delivery.maildir})
read by mail clients. L{gomail.mailaccess.maildir} is the protocol-neutral
read side (listing, unique ids, reading, removing, one session per mailbox);
L{gomail.mailaccess.pop3} and its neighbours serve it over POP3, through the
one login portal. The built-in plugin L{gomail.plugins.pop3} adds the service.
"""
