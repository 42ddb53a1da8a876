"""A defense's breaking point: its weakest setting that holds, refined by bisection."""

from __future__ import annotations

import math
from collections.abc import Callable, Generator

from leakage.sweep.paths import RESOLUTION, fmt, same_setting


def apart(a: float, b: float) -> tuple[str, str]:
    """``a`` and ``b`` printed with the fewest digits (at least 4) that tell them apart."""
    for digits in range(4, 18):
        x, y = f"{a:.{digits}g}", f"{b:.{digits}g}"
        if x != y:
            return x, y
    return fmt(a), fmt(b)


def _no_breaking_point(param: str, tried: list[float], ran: list[float]) -> str:
    """Why a defense has no breaking point: no cell of it ran (``ran`` empty), or it leaked at every
    value that ran; ``tried`` are its grid's values, ``ran`` those whose cells ran."""
    values = ", ".join(fmt(v) for v in tried)
    if not ran:
        return (f"not known: its only cell ({param} = {values}) could not run" if len(tried) == 1 else
                f"not known: none of its {len(tried)} cells ({param} = {values}) could run")
    skipped = len(tried) - len(ran)
    return (f"leaks at every setting tested, up to {param} = {fmt(ran[-1])}"
            + (f" ({skipped} of its {len(tried)} cells could not run)" if skipped else ""))


def search(defense: dict, holds: Callable[[dict], bool], refine: int) -> Generator[list[float], list[dict], dict]:
    """The search for one defense's breaking point, as a generator: it yields the values whose cells
    it needs next (the grid, then one bisection value at a time), is sent their rows, and returns the
    breaking point.

    ``holds(row)`` says whether the defense held in a cell; ``defense["values"]`` are ordered weakest
    first. The weakest setting that holds is refined by bisection between the last leaking and the
    first holding value; it stops early when the next value would be one setting with an end
    (closer than :data:`~leakage.sweep.paths.RESOLUTION`, relative), so every value it runs is a
    cell of its own.
    """
    # weakest first; cells that failed to run say nothing about leaking or holding
    grid = yield list(defense["values"])
    done = list(zip(defense["values"], grid))
    values = [v for v, r in done if r.get("status") == "ok"]
    rows = [r for _, r in done if r.get("status") == "ok"]
    first = next((i for i, r in enumerate(rows) if holds(r)), None)
    if first is None:
        return {"defense": defense["name"], "param": defense["param"], "breaking_point": None,
                "note": _no_breaking_point(defense["param"], [v for v, _ in done], values)}
    if first == 0:
        return {"defense": defense["name"], "param": defense["param"], "breaking_point": values[0],
                "note": f"already holds at the weakest setting tested ({defense['param']} = {fmt(values[0])})"}
    leak, hold = values[first - 1], values[first]
    steps = 0
    for _ in range(refine):
        mid = math.sqrt(leak * hold) if leak > 0 and hold > 0 else (leak + hold) / 2
        if same_setting(mid, leak) or same_setting(mid, hold):
            break
        steps += 1
        (row,) = yield [mid]
        if holds(row):
            hold = mid
        else:
            leak = mid
    held, leaked = apart(hold, leak)
    return {"defense": defense["name"], "param": defense["param"], "breaking_point": hold,
            "last_leaking": leak, "resolution": abs(hold - leak),
            "note": f"holds at {defense['param']} = {held}, leaks at {leaked}" + (
                f" (bisection stopped after {steps} of {refine} steps: its next value would be within {RESOLUTION:g}, "
                "relative, of an end)"
                if steps < refine else "")}


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
