"""Render the app's OpenAPI document as the committed `openapi.yaml`."""

from __future__ import annotations

import sys

import yaml
from fastapi import FastAPI


def render_openapi(app: FastAPI) -> str:
    return yaml.safe_dump(app.openapi(), sort_keys=False, allow_unicode=True)


def main() -> None:
    from stripesync.app import create_app

    sys.stdout.write(render_openapi(create_app()))


if __name__ == "__main__":
    main()
