# gomail in a container: twistd -n gomail, as a non-root user.
#
#   docker build -t gomail .
#   docker run -p 2525:2525 -v gomail-spool:/app/emails gomail
#   docker compose up          # with Redis and an nginx mail proxy (docker-compose.yml)
#
# The configuration is /app/gomail.toml (conf/docker/gomail.toml; mount your
# own over it, or the Go relay's /app/config.json with
# --config /app/config.json); the spool and Maildirs are in the /app/emails
# volume. The Go relay's environment variables (SMTP_PORT, FORWARD_HOST...)
# and GOMAIL_<SECTION>_<KEY> override the file.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# The package, installed as the README says for a deployment: pip install .
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY gomail ./gomail
COPY twisted ./twisted
RUN pip install . && rm -rf /src

RUN useradd --system --home-dir /app --shell /usr/sbin/nologin gomail \
    && mkdir -p /app/emails \
    && chown -R gomail:gomail /app
COPY --chown=gomail:gomail conf/docker/gomail.toml /app/gomail.toml

USER gomail
WORKDIR /app
VOLUME ["/app/emails"]
# SMTP, nginx auth_http (for the mail proxy); /health stays inside (127.0.0.1:8025).
EXPOSE 2525 8090
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8025/health', timeout=4).status != 200)"]
# twistd stops on SIGTERM: the SMTP sessions are drained, the spool writer finishes its jobs.
STOPSIGNAL SIGTERM
CMD ["twistd", "-n", "--pidfile=", "gomail", "--config", "/app/gomail.toml"]
