"""The SMTP server: protocol, DATA parsing, relay policy, listeners."""
