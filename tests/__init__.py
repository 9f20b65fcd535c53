"""gomail's trial test suite."""
