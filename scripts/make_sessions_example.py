"""Write the small synthetic session dataset of ``experiments/datasets/sessions-example.yaml``.

Each of 60 users has 2-5 sessions; a session walks a few steps along one of four item "routes"
(a fixed cyclic order of 10 items each), starting anywhere on it and mostly (3 in 4 steps) moving
to the next item, so the next item of a session is predictable from its previous ones but not
from the user's earlier sessions. Deterministic
(seed 7); rerun to regenerate ``sessions-example/clicks.csv``.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "experiments" / "datasets" / "sessions-example" / "clicks.csv"


def main() -> None:
    rng = random.Random(7)
    routes = [rng.sample(range(100 + 10 * r, 110 + 10 * r), 10) for r in range(4)]
    rows, session, clock = [], 1000, 1_600_000_000
    for user in range(1, 61):
        for _ in range(rng.randint(2, 5)):
            session += 1
            route = routes[rng.randrange(4)]
            start = rng.randrange(10)
            position = start
            for _ in range(rng.randint(4, 8)):
                clock += rng.randint(5, 120)
                # mostly the next item on the route; sometimes a jump to a random place on it
                position = position + 1 if rng.random() < 0.75 else rng.randrange(10)
                rows.append((session, user, route[position % 10], clock))
            clock += 3600
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["session_id", "user_id", "item_id", "timestamp"])
        writer.writerows(rows)
    print(f"wrote {len(rows)} clicks in {session - 1000} sessions to {OUT}")


if __name__ == "__main__":
    main()
