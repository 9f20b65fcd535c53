"""gomail's HTTP side: the nginx auth_http endpoint and the monitoring/admin routes."""
