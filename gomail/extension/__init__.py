"""Loading plugins (L{loader}), running their hooks bounded (L{runner}), and wiring them into gomail."""
