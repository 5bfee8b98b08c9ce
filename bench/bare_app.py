"""The yardstick for bench/ingest.py: a FastAPI endpoint that reads the body and answers 200.

Started exactly as `stripesync serve` starts the real app (same uvicorn options), so the
ratio between the two measures what verifying, storing and enqueueing cost.
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def create_app() -> FastAPI:
    app = FastAPI()

    @app.post("/webhooks/stripe")
    async def receive(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"received": True, "duplicate": False})

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # The same options as stripesync.cli.cmd_serve.
    uvicorn.run(
        "bare_app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=1,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        log_level="warning",
    )
