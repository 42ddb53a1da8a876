"""A defense's breaking point: its weakest setting that holds, refined by bisection."""

from __future__ import annotations

import math
from collections.abc import Callable


def breaking_point(defense: dict, result: Callable[[dict, float], dict], holds: Callable[[dict], bool],
                   refine: int) -> dict:
    """Weakest setting that holds, refined by bisection between the last leaking and first holding value.

    ``result(defense, value)`` is a cell's summary (running it if needed); ``holds(row)`` says whether
    the defense held there. ``defense["values"]`` are ordered weakest first.
    """
    # weakest first; cells that failed to run say nothing about leaking or holding
    done = [(v, result(defense, v)) for v in defense["values"]]
    values = [v for v, r in done if r.get("status") == "ok"]
    rows = [r for _, r in done if r.get("status") == "ok"]
    first = next((i for i, r in enumerate(rows) if holds(r)), None)
    if first is None:
        return {"defense": defense["name"], "param": defense["param"], "breaking_point": None,
                "note": f"no tested {defense['param']} holds" + (f" (up to {values[-1]:g})" if values else "")}
    if first == 0:
        return {"defense": defense["name"], "param": defense["param"], "breaking_point": values[0],
                "note": f"the weakest tested {defense['param']} ({values[0]:g}) already holds"}
    leak, hold = values[first - 1], values[first]
    for _ in range(refine):
        mid = math.sqrt(leak * hold) if leak > 0 and hold > 0 else (leak + hold) / 2
        if holds(result(defense, mid)):
            hold = mid
        else:
            leak = mid
    return {"defense": defense["name"], "param": defense["param"], "breaking_point": hold,
            "last_leaking": leak, "resolution": abs(hold - leak),
            "note": f"holds at {defense['param']} = {hold:.4g}, leaks at {leak:.4g}"}
