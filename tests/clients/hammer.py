"""One worker process of the shared-budget test: N coroutines calling the platform as fast
as the shared limiter lets them, until a deadline.

python -m tests.clients.hammer --api URL --redis URL --name BUDGET --workers 4
    --start-at EPOCH --seconds S [--rps 4] [--no-limiter]
Prints the number of successful calls.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx
from redis.asyncio import Redis

from stripesync.clients.constant_contact import ConstantContactClient, constant_contact_limiter
from stripesync.config import Settings


async def _token(force_refresh: bool) -> str:
    return "hammer-token"


async def hammer(args: argparse.Namespace) -> int:
    redis = Redis.from_url(args.redis)
    limiter = None
    if not args.no_limiter:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            cc_client_id=args.name,
            cc_requests_per_second=args.rps,
            cc_requests_per_day=args.per_day,
        )
        limiter = constant_contact_limiter(redis, settings)
    done = 0
    async with httpx.AsyncClient() as http:
        client = ConstantContactClient(
            http, api_base=args.api, token=_token, limiter=limiter, max_attempts=1
        )
        await asyncio.sleep(max(0.0, args.start_at - time.time()))
        deadline = time.time() + args.seconds

        async def worker(n: int) -> None:
            nonlocal done
            i = 0
            while time.time() < deadline:
                i += 1
                try:
                    await client.find_contact(f"w{n}-{i}@example.com")
                    done += 1
                except Exception:
                    pass

        await asyncio.gather(*(worker(n) for n in range(args.workers)))
    await redis.aclose()
    return done


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--api", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rps", type=float, default=4)
    parser.add_argument("--per-day", type=int, default=10_000)
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--no-limiter", action="store_true")
    print(asyncio.run(hammer(parser.parse_args())), flush=True)


if __name__ == "__main__":
    main()
