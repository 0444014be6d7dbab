#!/usr/bin/env python3
"""Generate the ChainLens benchmark dataset (issue 8, "Speed and memory").

Fixed so no one tunes it to the compressor; seeded, so every run makes the same data:

  supabase       auth.users + user_profiles: a pool of 50,000 random UUID users;
                 usage_events over 6 monthly partitions (2025-01 .. 2025-06): 12 event
                 types, metadata JSONB with 3-6 keys of random numbers and 16-hex strings,
                 random inet addresses.
  microservices  price_history: a random walk per project (500 projects), same 6 months;
                 project_analyses: the seed's JSONB shapes filled with random numbers;
                 sentiment_analyses + social_mentions: 200-800 characters of random words
                 from a 5,000-word list (the list itself generated from the seed).

The databases must have had `chainlens-ops schema apply`. Rows go in with COPY.
The size budget (--mb, default 500) is counted in COPY text bytes and split
usage 50%, mentions 30%, prices 15%, analyses 5%.

    python scripts/gen_dataset.py --supabase DSN --microservices DSN [--mb 500] [--seed 8]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import uuid
from collections.abc import Callable, Iterator

import psycopg

USERS = 50_000
PROJECTS = 500
EVENT_TYPES = (
    "api_call", "login", "logout", "analysis_requested", "analysis_viewed", "export",
    "watchlist_add", "watchlist_remove", "alert_created", "alert_triggered",
    "subscription_changed", "search",
)  # fmt: skip
MONTHS = 6
START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
EPOCH = START.isoformat()
SPAN_S = int((dt.datetime(2025, 7, 1, tzinfo=dt.UTC) - START).total_seconds())
SHARES = {"usage": 0.50, "mentions": 0.30, "prices": 0.15, "analyses": 0.05}
PRICE_STEP_S = 300
BATCH = 1 << 20


def words(rng: random.Random, count: int = 5000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < count:
        w = "".join(rng.choice(letters) for _ in range(rng.randint(2, 11)))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _ts(rng: random.Random) -> str:
    return (START + dt.timedelta(seconds=rng.randrange(SPAN_S))).isoformat()


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _row(*values: object) -> str:
    return "\t".join("\\N" if v is None else _esc(str(v)) for v in values) + "\n"


def _copy(conn: psycopg.Connection, sql: str, rows: Iterator[str]) -> int:
    total = 0
    with conn.cursor() as cur, cur.copy(sql) as copy:
        buf: list[str] = []
        size = 0
        for line in rows:
            buf.append(line)
            size += len(line)
            if size >= BATCH:
                copy.write("".join(buf).encode())
                total += size
                buf, size = [], 0
        if buf:
            copy.write("".join(buf).encode())
            total += size
    return total


def _budgeted(budget: int, make: Callable[[], str]) -> Iterator[str]:
    used = 0
    while used < budget:
        line = make()
        used += len(line)
        yield line


def _month_partitions(conn: psycopg.Connection, table: str) -> None:
    for m in range(MONTHS):
        lo = dt.date(2025, 1 + m, 1)
        hi = dt.date(2025 + (m + 1) // 12, (m + 1) % 12 + 1, 1)
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table}_y{lo.year}m{lo.month:02d} PARTITION OF {table} "
            f"FOR VALUES FROM ('{lo} 00:00+00') TO ('{hi} 00:00+00')"
        )


def gen_supabase(conn: psycopg.Connection, rng: random.Random, budget: int) -> dict[str, int]:
    users = [_uuid(rng) for _ in range(USERS)]
    _copy(
        conn,
        "COPY auth.users (id, email, created_at) FROM STDIN",
        (_row(u, f"{u[:8]}@x.test", EPOCH) for u in users),
    )
    tiers = ("free", "pro", "enterprise")
    _copy(
        conn,
        "COPY public.user_profiles (id, email, tier, created_at, updated_at) FROM STDIN",
        (_row(u, f"{u[:8]}@x.test", rng.choice(tiers), EPOCH, EPOCH) for u in users),
    )
    _month_partitions(conn, "public.usage_events")

    def event() -> str:
        meta: dict[str, object] = {}
        for k in range(rng.randint(3, 6)):
            meta[f"k{k}"] = (
                rng.random() * 1e6 if rng.random() < 0.5 else f"{rng.getrandbits(64):016x}"
            )
        ip = ".".join(str(rng.randrange(256)) for _ in range(4))
        return _row(
            _uuid(rng), rng.choice(users), rng.choice(EVENT_TYPES), "project",
            f"p{rng.randrange(PROJECTS)}", json.dumps(meta), ip, "chainlens-web/1.0", _ts(rng),
        )  # fmt: skip

    sql = (
        "COPY public.usage_events (id, user_id, event_type, resource_type, resource_id, "
        "metadata, ip_address, user_agent, created_at) FROM STDIN"
    )
    return {"users": USERS, "usage_bytes": _copy(conn, sql, _budgeted(budget, event))}


def gen_microservices(
    conn: psycopg.Connection, rng: random.Random, shares: dict[str, int]
) -> dict[str, int]:
    vocab = words(rng)
    projects = [f"project-{i:03d}" for i in range(PROJECTS)]
    _month_partitions(conn, "onchain_analysis.price_history")

    def prices() -> Iterator[str]:
        per_project = max(1, shares["prices"] // (PROJECTS * 90))
        step = max(PRICE_STEP_S, SPAN_S // per_project)
        for p in projects:
            price = rng.uniform(0.01, 5000)
            address = f"0x{rng.getrandbits(160):040x}"
            for i in range(per_project):
                price = max(1e-6, price * (1 + rng.gauss(0, 0.01)))
                when = (START + dt.timedelta(seconds=i * step)).isoformat()
                cap = int(price * rng.randint(10**6, 10**9))
                volume = rng.randint(10**4, 10**9)
                yield _row(_uuid(rng), p, address, 1, f"{price:.8f}", cap, volume, when, when)

    sql = (
        "COPY onchain_analysis.price_history (id, project_id, token_address, chain_id, price, "
        'market_cap, volume_24h, "timestamp", created_at) FROM STDIN'
    )
    out = {"prices_bytes": _copy(conn, sql, prices())}

    def analysis() -> str:
        r = rng.random
        price = {"current": r() * 1000, "change24h": r() * 20 - 10, "change7d": r() * 40 - 20,
                 "marketCap": rng.randint(10**6, 10**11), "volume24h": rng.randint(10**4, 10**9),
                 "volatility": r()}  # fmt: skip
        liquidity = {
            "totalLiquidity": rng.randint(10**5, 10**9), "liquidityScore": rng.randint(0, 100),
            "topPools": [{"pool": f"0x{rng.getrandbits(64):016x}", "tvl": r() * 1e7}
                         for _ in range(rng.randint(1, 4))],
            "slippageEstimate": {"1k": r(), "10k": r() * 2, "100k": r() * 5},
        }  # fmt: skip
        holders = {"totalHolders": rng.randint(100, 10**6), "top10Concentration": r(),
                   "distributionScore": rng.randint(0, 100),
                   "whaleActivity": rng.choice(("low", "medium", "high"))}  # fmt: skip
        tx = {
            "count24h": rng.randint(0, 10**6),
            "avgSize": r() * 1e4,
            "uniqueAddresses": rng.randint(0, 10**5),
        }
        return _row(
            _uuid(rng), rng.choice(projects), f"0x{rng.getrandbits(160):040x}", 1,
            json.dumps(price), json.dumps(liquidity), json.dumps(holders), json.dumps(tx),
            f"{r() * 100:.2f}", f"{r():.2f}", *[_ts(rng)] * 2,
        )  # fmt: skip

    sql = (
        "COPY onchain_analysis.project_analyses (id, project_id, token_address, chain_id, "
        "price_data, liquidity_data, holder_data, transaction_data, risk_score, confidence, "
        "created_at, updated_at) FROM STDIN"
    )
    out["analyses_bytes"] = _copy(conn, sql, _budgeted(shares["analyses"], analysis))

    sentiments = [_uuid(rng) for _ in range(2 * PROJECTS)]
    _copy(
        conn,
        "COPY sentiment_analysis.sentiment_analyses (id, project_id, overall_sentiment, "
        "confidence, created_at, updated_at) FROM STDIN",
        (_row(s, projects[i % PROJECTS], f"{rng.uniform(-1, 1):.2f}",
              f"{rng.random():.2f}", *[EPOCH] * 2)
         for i, s in enumerate(sentiments)),
    )  # fmt: skip

    def mention() -> str:
        target = rng.randint(200, 800)
        parts: list[str] = []
        size = -1
        while size < target:
            w = rng.choice(vocab)
            parts.append(w)
            size += len(w) + 1
        text = " ".join(parts)[:target]
        return _row(
            _uuid(rng), rng.choice(sentiments), rng.choice(("twitter", "reddit", "news")),
            str(rng.getrandbits(62)), f"user{rng.randrange(USERS)}", text,
            f"{rng.uniform(-1, 1):.2f}", json.dumps({"likes": rng.randint(0, 10**5)}),
            *[_ts(rng)] * 2,
        )  # fmt: skip

    sql = (
        "COPY sentiment_analysis.social_mentions (id, analysis_id, source, platform_id, author, "
        "content, sentiment_score, engagement_metrics, published_at, created_at) FROM STDIN"
    )
    out["mentions_bytes"] = _copy(conn, sql, _budgeted(shares["mentions"], mention))
    return out


def generate(supabase_dsn: str, microservices_dsn: str, mb: float, seed: int) -> dict[str, int]:
    total = int(mb * 1024 * 1024)
    shares = {k: int(total * v) for k, v in SHARES.items()}
    with psycopg.connect(supabase_dsn) as conn:
        result = gen_supabase(conn, random.Random(f"{seed}-supabase"), shares["usage"])
    with psycopg.connect(microservices_dsn) as conn:
        result |= gen_microservices(conn, random.Random(f"{seed}-microservices"), shares)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--supabase", required=True, help="DSN of the supabase database")
    parser.add_argument("--microservices", required=True, help="DSN of the microservices database")
    parser.add_argument("--mb", type=float, default=500.0, help="size in MB of COPY text")
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args(argv)
    result = generate(args.supabase, args.microservices, args.mb, args.seed)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
