"""A defense's breaking point: its weakest setting that holds, refined by bisection."""

from __future__ import annotations

import math
from collections.abc import Callable, Generator


def search(defense: dict, holds: Callable[[dict], bool], refine: int) -> Generator[list[float], list[dict], dict]:
    """The search for one defense's breaking point, as a generator: it yields the values whose cells
    it needs next (the grid, then one bisection value at a time), is sent their rows, and returns the
    breaking point.

    ``holds(row)`` says whether the defense held in a cell; ``defense["values"]`` are ordered weakest
    first. The weakest setting that holds is refined by bisection between the last leaking and the
    first holding value.
    """
    # weakest first; cells that failed to run say nothing about leaking or holding
    grid = yield list(defense["values"])
    done = list(zip(defense["values"], grid))
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
        (row,) = yield [mid]
        if holds(row):
            hold = mid
        else:
            leak = mid
    return {"defense": defense["name"], "param": defense["param"], "breaking_point": hold,
            "last_leaking": leak, "resolution": abs(hold - leak),
            "note": f"holds at {defense['param']} = {hold:.4g}, leaks at {leak:.4g}"}


def breaking_points(defenses: list[dict], results: Callable[[list[tuple[dict, float]]], list[dict]],
                    holds: Callable[[dict], bool], refine: int) -> list[dict]:
    """Every defense's breaking point, searched in rounds: ``results(requests)`` is given the cells
    ``(defense, value)`` that all the searches need next (first every grid, then each round's
    bisection values) at once, so that a round's cells can run together."""
    searches = [search(d, holds, refine) for d in defenses]
    points: list[dict | None] = [None] * len(defenses)
    wanted: dict[int, list[float]] = {}
    for i, s in enumerate(searches):
        wanted[i] = next(s)
    while wanted:
        rows = iter(results([(defenses[i], v) for i, values in wanted.items() for v in values]))
        asked, wanted = wanted, {}
        for i, values in asked.items():
            try:
                wanted[i] = searches[i].send([next(rows) for _ in values])
            except StopIteration as stop:
                points[i] = stop.value
    return points  # type: ignore[return-value]


def breaking_point(defense: dict, result: Callable[[dict, float], dict], holds: Callable[[dict], bool],
                   refine: int) -> dict:
    """Weakest setting that holds, refined by bisection between the last leaking and first holding value.

    ``result(defense, value)`` is a cell's summary (running it if needed), asked for one cell at a time.
    """
    return breaking_points([defense], lambda requests: [result(d, v) for d, v in requests], holds, refine)[0]
