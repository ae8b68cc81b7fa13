#!/bin/sh
# Healthy when GET /api/health answers 200 on the configured HTTP port.
exec curl -fsS -m 2 "http://127.0.0.1:${GALE_HTTP_PORT:-8080}/api/health" >/dev/null
