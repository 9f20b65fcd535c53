"""Users, credentials and the checkers every protocol authenticates through."""
