"""The report of the capacity benchmark: figures, extrapolation and goals. Turns what a rush
measured into figures (percentiles, close-to-result by file size, CPU by thread kind, peaks)
and prints them, extrapolates the calibrated per-district and per-row costs to one node's
2-hour night and to the nation's 13,000 districts, and checks the results against the GOAL_*
thresholds. Kept apart so that the measuring code holds no formatting and the goals are
stated in one place.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from capacity_clients import Rush
from capacity_observe import KINDS, Sampler
from capacity_population import SIZE_CLASSES, Dist

NATION_DISTRICTS, NATION_STUDENTS = 13_000, 49_000_000
NIGHT_SECONDS = 2 * 3600
GOAL_LAST_AFTER_WINDOW = 600.0
GOAL_P99_C2R = 60.0
GOAL_SLOWEST_REQUEST = 2.0
GOAL_HOSTILE_RATIO = 2.0


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered) / 100))
    return ordered[min(rank, len(ordered)) - 1]


def dist3(values: list[float]) -> str:
    return (
        f"p50 {pct(values, 50):.2f} s, p95 {pct(values, 95):.2f} s, p99 {pct(values, 99):.2f} s,"
        f" max {max(values, default=float('nan')):.2f} s (n={len(values)})"
    )


def rush_figures(rush: Rush, sampler: Sampler, args: argparse.Namespace) -> dict[str, Any]:
    last = max(rush.seen_at, default=float("nan"))
    peak_rss, peak_tcp = sampler.window(rush.start - 1, last + 1)
    slowest = max(rush.slowest.items(), key=lambda kv: kv[1][0], default=("-", (0.0, "-")))
    return {
        "last_result_s": last - rush.start,
        "after_window_s": last - rush.start - args.window,
        "c2r_seen": rush.c2r_seen,
        "c2r_server": rush.c2r_server,
        "login": rush.login,
        "slowest_request": slowest,
        "slowest_by_request": rush.slowest,
        "peak_sessions": rush.peak_sessions,
        "peak_tcp": peak_tcp,
        "peak_rss_mb": peak_rss,
        "errors": sum(rush.errors.values()),
        "checked": rush.checked,
        "rows": rush.rows,
    }


def print_rush(rush: Rush, fig: dict[str, Any], n: int, scrypt_s: float, logins: int) -> None:
    print(f"\n{rush.name}: {n} districts, {fig['rows']:,} rows in checked results")
    print(
        f"  last result {fig['last_result_s']:.1f} s after the window opened"
        f" ({fig['after_window_s']:+.1f} s after it closed)"
    )
    print(f"  close-to-result, seen by polling: {dist3(fig['c2r_seen'])}")
    print(f"  close-to-result, server (file mtime): {dist3(fig['c2r_server'])}")
    for label, low, high in SIZE_CLASSES:
        inside = [c2r for size, c2r in rush.by_size if low <= size < high]
        if inside:
            print(f"      {label:<26} {dist3(inside)}")
    print(f"  login (TCP + key exchange + auth): {dist3(fig['login'])}")
    print(f"  upload (open + writes + close): {dist3(rush.upload)}")
    what, (secs, who) = fig["slowest_request"]
    print(f"  slowest SFTP request: {secs:.2f} s ({what}, {who})")
    for name, (s, w) in sorted(fig["slowest_by_request"].items(), key=lambda kv: -kv[1][0]):
        print(f"      {name:<16} max {s:7.3f} s ({w})")
    print(
        f"  peak sessions: {fig['peak_sessions']} (clients), {fig['peak_tcp']} TCP connections"
        f" to the server; peak server RSS (with workers) {fig['peak_rss_mb']:.0f} MB"
    )
    cpu = rush.info.get("cpu", {})
    total = sum(cpu.values())
    wall = rush.info.get("wall", float("nan"))
    print(f"  server CPU {total:.1f} s in {wall:.1f} s ({total / wall:.2f} cores):")
    waited = rush.info.get("waited", {})
    for kind in KINDS:
        print(
            f"      {kind:<14} {cpu.get(kind, 0.0):7.1f} s"
            f"   (runnable but waiting for a CPU {waited.get(kind, 0.0):6.1f} s)"
        )
    print(
        f"      of which login hashing: {logins} password logins x {1000 * scrypt_s:.0f} ms"
        f" = {logins * scrypt_s:.1f} s (scrypt measured here)"
    )
    print(f"  client CPU {rush.info.get('client_cpu', 0):.1f} s; client loop lag {dist3(rush.lag)}")
    load = rush.info.get("load", (float("nan"),) * 3)
    print("  machine load average at the end (1/5/15 min): " + " ".join(f"{v:.1f}" for v in load))
    if "hostile" in rush.info:
        h = rush.info["hostile"]
        print(f"  hostile clients: CPU {h.get('cpu', 0):.1f} s, {h.get('counts')}")
        print(
            f"      lister listdir p99 {h.get('lister_p99', float('nan')):.3f} s,"
            f" max {h.get('lister_max', float('nan')):.3f} s"
        )
    print(f"  results checked correct: {fig['checked']}/{n}; errors: {fig['errors']}")
    for text, count in rush.errors.most_common(10):
        print(f"      {count:>5} x {text}")


def extrapolate(
    dists: list[Dist], rush: Rush, fig: dict[str, Any], p0: dict[str, Any],
    cal: dict[str, float],
) -> dict[str, Any]:  # fmt: skip
    """The calibrated a + b x rows, scaled by what the rush really cost (contention)."""
    total = sum(rush.info["cpu"].values())
    a, b = cal["per_district"], cal["per_row"]
    rows = fig["rows"]
    predicted = len(dists) * a + rows * b
    contention = total / predicted if predicted > 0 else 1.0
    cores = os.cpu_count() or 2
    usable = cores * NIGHT_SECONDS
    mean_rows = rows / len(dists)
    per_mean_district = (a + b * mean_rows) * contention
    nation_cpu = (NATION_DISTRICTS * a + NATION_STUDENTS * b) * contention
    db_bytes = p0["db_bytes"] / max(1, p0["students"])
    return {
        "per_district_cpu_s": a,
        "per_row_cpu_us": b * 1e6,
        "calibration": cal,
        "rush_cpu_s": total,
        "rush_predicted_cpu_s": predicted,
        "contention": contention,
        "node_districts_2h": usable / per_mean_district,
        "node_students_2h": usable / per_mean_district * mean_rows,
        "nation_cpu_s": nation_cpu,
        "nation_hours_one_node": nation_cpu / cores / 3600,
        "nation_nodes": nation_cpu / usable,
        "db_bytes_per_student": db_bytes,
        "nation_db_gb": db_bytes * NATION_STUDENTS / 1e9,
        "first_load_cpu_per_row_us": p0["cpu_per_row_us"],
        "nation_first_load_hours_one_node": p0["cpu_per_row_us"] * NATION_STUDENTS / 1e6
        / cores / 3600,
    }  # fmt: skip


def print_extrapolation(x: dict[str, Any]) -> None:
    cal = x["calibration"]
    print("\nExtrapolation (server CPU: what runs out first, see docs/capacity.md)")
    print(
        f"  alone: the 20 smallest districts {cal['small_cpu'] * 1000:.0f} ms CPU each"
        f" ({cal['small_rows']:,} rows), the 2 largest {cal['large_cpu']:.2f} s"
        f" ({cal['large_rows']:,} rows)"
    )
    print(
        f"  -> per district {x['per_district_cpu_s'] * 1000:.0f} ms (login, SSH, SFTP, run,"
        f" commit, results, email) + {x['per_row_cpu_us']:.1f} us per row of a nightly"
        f" extract; the rush cost {x['rush_cpu_s']:.0f} s, {x['contention']:.2f}x the"
        f" {x['rush_predicted_cpu_s']:.0f} s this predicts (contention, included below)"
    )
    print(
        f"  one node (this machine, {os.cpu_count()} cores) in a 2-hour window:"
        f" {x['node_districts_2h']:,.0f} districts of this mix"
        f" ({x['node_students_2h'] / 1e6:.1f} M students)"
    )
    print(
        f"  national night ({NATION_DISTRICTS:,} districts, {NATION_STUDENTS / 1e6:.0f} M"
        f" students): {x['nation_cpu_s'] / 3600:.1f} CPU-hours ="
        f" {x['nation_hours_one_node']:.1f} h on one node"
        f" ({x['nation_nodes']:.2f} x the node's 2-hour window)"
    )
    print(
        f"  database {x['db_bytes_per_student']:.0f} bytes per student ->"
        f" {x['nation_db_gb']:.0f} GB for the nation; first loads"
        f" {x['first_load_cpu_per_row_us']:.0f} us CPU per row ->"
        f" {x['nation_first_load_hours_one_node']:.1f} h on one node (once, not nightly)"
    )


def goal_lines(
    quiet: dict[str, Any], hostile: dict[str, Any] | None, x: dict[str, Any] | None
) -> list[tuple[str, str, str, bool]]:
    lines = [
        (
            "every result within 10 min of the window's end",
            f"{quiet['after_window_s']:.0f} s",
            f"<= {GOAL_LAST_AFTER_WINDOW:.0f} s",
            quiet["after_window_s"] <= GOAL_LAST_AFTER_WINDOW,
        ),
        ("errors", str(quiet["errors"]), "0", quiet["errors"] == 0),
        (
            "p99 close-to-result (seen)",
            f"{pct(quiet['c2r_seen'], 99):.1f} s",
            f"< {GOAL_P99_C2R:.0f} s",
            pct(quiet["c2r_seen"], 99) < GOAL_P99_C2R,
        ),
        (
            "slowest SFTP request",
            f"{quiet['slowest_request'][1][0]:.2f} s",
            f"< {GOAL_SLOWEST_REQUEST:.0f} s",
            quiet["slowest_request"][1][0] < GOAL_SLOWEST_REQUEST,
        ),
    ]
    if hostile is not None:
        for label, key in (("p99 close-to-result", "c2r_seen"), ("p99 login", "login")):
            ratio = pct(hostile[key], 99) / max(pct(quiet[key], 99), 0.5)
            lines.append(
                (
                    f"hostile/quiet {label}",
                    f"{ratio:.2f}x",
                    f"<= {GOAL_HOSTILE_RATIO:.0f}x",
                    ratio <= GOAL_HOSTILE_RATIO,
                )
            )
        last = hostile["last_result_s"] / max(quiet["last_result_s"], 1.0)
        lines.append(("hostile/quiet last result", f"{last:.2f}x", "<= 2x", last <= 2.0))
        lines.append(("hostile errors", str(hostile["errors"]), "0", hostile["errors"] == 0))
    if x is not None:
        lines.append(
            (
                "national night on one node",
                f"{x['nation_hours_one_node']:.1f} h",
                "<= 2 h",
                x["nation_hours_one_node"] <= 2.0,
            )
        )
    return lines
