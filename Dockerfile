# Breeze MCP container image.
#
# Without configuration the container runs in development mode, with an embedded PostgreSQL
# and generated keys kept in BREEZE_STATE_DIR (mount a volume there to keep them):
#
#   docker build -t breeze-mcp .
#   docker run --rm -p 8000:8000 -v breeze-state:/var/lib/breeze-mcp breeze-mcp
#
# Production sets BREEZE_MODE=production, BREEZE_DATABASE_URL (the runtime role),
# BREEZE_MIGRATE_DATABASE_URL (the schema owner, used by --migrate), BREEZE_PUBLIC_URL, and
# the secrets BREEZE_SESSION_KEY, BREEZE_MFA_ENCRYPTION_KEY and BREEZE_BILLING_WEBHOOK_SECRET;
# it refuses to start without them. See the README's configuration table.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user to run as (the embedded PostgreSQL also refuses to run as root).
RUN useradd --system --create-home --uid 10001 --shell /usr/sbin/nologin breeze \
    && install -d -o breeze -g breeze -m 0700 /var/lib/breeze-mcp

WORKDIR /build
COPY pyproject.toml README.md ./
COPY breeze_mcp ./breeze_mcp
COPY migrations ./migrations
RUN pip install . \
    && cd / \
    && rm -rf /build

ENV BREEZE_HOST=0.0.0.0 \
    BREEZE_PORT=8000 \
    BREEZE_STATE_DIR=/var/lib/breeze-mcp

USER breeze
WORKDIR /home/breeze
VOLUME ["/var/lib/breeze-mcp"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('BREEZE_PORT', '8000'), timeout=4)"

CMD ["breeze-mcp", "serve", "--migrate"]
