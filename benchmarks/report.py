"""The report: one table of figures and ratios (its rows are data: :data:`ROWS`), and the
raw figures behind it, one line each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.host import USER
from harness.gateway import SERVICE_ACCOUNT

#: A figure of the table: a path into the results (``key/system/field...``), a constant,
#: or the ratio of two paths.
Figure = str | float | tuple[str, str]

SYSTEMS = ("ours", "stock", "jobqueue", "floor")
#: The ratio columns: ours over each other system.
RATIOS = (("ours/stock", "stock"), ("ours/jq", "jobqueue"), ("ours/floor", "floor"))


@dataclass(frozen=True)
class Row:
    label: str
    figures: dict[str, Figure]
    #: False where jobqueue has no scheduler job (its scheduler runs in the client
    #: process), so that it neither waits for one to start nor to end: "n/c".
    jobqueue_comparable: bool = True


def _gateways(key: str, field: str) -> dict[str, Figure]:
    return {system: f"{key}/{system}/{field}" for system in ("ours", "stock")}


ROWS = [
    Row(
        "1. new_cluster() to RUNNING, median of runs [s]",
        {
            **_gateways("s1", "median"),
            "jobqueue": "s1/jobqueue/median",
            "floor": "floor_scheduler/floor/median",
        },
        jobqueue_comparable=False,
    ),
    Row(
        "1b. new_cluster() again on the same env, median of runs 2.. [s]",
        {**_gateways("s1", "second_median"), "floor": "floor_scheduler/floor/median"},
        jobqueue_comparable=False,
    ),
    Row(
        "2. scale(100) to 100 jobs in squeue [s]",
        {
            **_gateways("s2", "scale"),
            "jobqueue": "s2/jobqueue/scale",
            "floor": "floor_array/floor/array",
        },
    ),
    Row(
        "2b. scale(500) to 500 jobs in squeue [s]",
        {"ours": "s6/ours/scale", "floor": "floor_array_500/floor/array"},
    ),
    Row(
        "3. scale(16) + wait_for_workers(16) [s]",
        {
            **_gateways("s3", "seconds"),
            "jobqueue": "s3/jobqueue/seconds",
            "floor": "floor_pair/floor/workers",
        },
    ),
    Row(
        "4. shutdown, 100 workers: worker jobs gone [s]",
        {
            **_gateways("s2", "workers_gone"),
            "jobqueue": "s2/jobqueue/shutdown",  # all its jobs are workers
            "floor": "floor_array/floor/array_cancel",
        },
    ),
    Row(
        "4. shutdown, 100 workers: queue empty [s]",
        {
            **_gateways("s2", "shutdown"),
            "jobqueue": "s2/jobqueue/shutdown",
            "floor": "floor_pair/floor/teardown",
        },
        jobqueue_comparable=False,
    ),
    Row(
        "4b. shutdown, 500 workers: worker jobs gone [s]",
        {"ours": "s6/ours/workers_gone", "floor": "floor_array_500/floor/array_cancel"},
    ),
    Row(
        "4b. shutdown, 500 workers: queue empty [s]",
        {"ours": "s6/ours/shutdown", "floor": "floor_pair/floor/teardown"},
    ),
    Row(
        "5. gateway RPCs/min, 1 cluster x 10 idle",
        {**_gateways("s5", "1x10/gateway_per_min"), "floor": 0.0},
    ),
    Row(
        "5. gateway RPCs/min, 10 clusters x 10 idle",
        {**_gateways("s5", "10x10/gateway_per_min"), "floor": 0.0},
    ),
    Row(
        "5. growth 10x10 / 1x10 (1.0 = O(1))",
        {
            system: (f"s5/{system}/10x10/gateway_per_min", f"s5/{system}/1x10/gateway_per_min")
            for system in ("ours", "stock")
        },
    ),
    Row("6. list_clusters p50, idle [ms]", {"ours": "s6/ours/idle/p50_ms"}),
    Row("6. list_clusters p50, during scale(500) [ms]", {"ours": "s6/ours/during/p50_ms"}),
    Row("6. list_clusters p99, during scale(500) [ms]", {"ours": "s6/ours/during/p99_ms"}),
    Row("6. list_clusters max, during scale(500) [ms]", {"ours": "s6/ours/during/max_ms"}),
    Row(
        "6. list_clusters p99, during its shutdown [ms]", {"ours": "s6/ours/during_shutdown/p99_ms"}
    ),
    Row(
        "6. list_clusters max, during its shutdown [ms]", {"ours": "s6/ours/during_shutdown/max_ms"}
    ),
    # Scenario 7: ours through SSH against ours with local sudo, in the "ours" column.
    Row("7. new_cluster() median, local sudo [s]", {"ours": "s7/sudo/median"}),
    Row("7. new_cluster() median, through SSH [s]", {"ours": "s7/ssh/median"}),
    Row("7. new_cluster() SSH / local sudo", {"ours": ("s7/ssh/median", "s7/sudo/median")}),
    Row("7. scale(100) to squeue, local sudo [s]", {"ours": "s7b/sudo/scale"}),
    Row("7. scale(100) to squeue, through SSH [s]", {"ours": "s7b/ssh/scale"}),
    Row("7. scale(100) SSH / local sudo", {"ours": ("s7b/ssh/scale", "s7b/sudo/scale")}),
    Row("8. scheduler scancelled: FAILED seen, median [s]", _gateways("s8", "failed_median")),
    Row(
        "8. worker scancelled: replacement in squeue, median [s]",
        _gateways("s8", "replaced_median"),
    ),
    Row("9. scale(2000) to squeue [s]", _gateways("s9", "scale")),
    Row("9. scale(2000) shutdown to empty queue [s]", {"ours": "s9/ours/shutdown"}),
    Row("10. QOS 50, scale(80): jobs queued", {"ours": "s10/ours/queued"}),
    Row("10. QOS 50, scale(80): workers held in the gateway", {"ours": "s10/ours/held"}),
    Row("10. held out after 10 jobs end [s]", {"ours": "s10/ours/held_out_after_end"}),
]


def _get(results: dict, *path: str):
    value = results
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _pick(results: dict, path: str) -> float | str | None:
    """The number at ``key/system/field...``; "FAILED" if that measurement failed."""
    key, system, *field = path.split("/")
    entry = _get(results, key, system)
    if isinstance(entry, dict) and "error" in entry:
        return "FAILED"
    return _get(results, key, system, *field)


def figure(results: dict, spec: Figure | None) -> float | str | None:
    """The value of one cell of the table: a number, "FAILED" or None (not measured)."""
    if spec is None or isinstance(spec, float):
        return spec
    if isinstance(spec, str):
        return _pick(results, spec)
    top, bottom = (_pick(results, path) for path in spec)
    if "FAILED" in (top, bottom):
        return "FAILED"
    if isinstance(top, int | float) and isinstance(bottom, int | float) and bottom:
        return top / bottom
    return None


def fmt(value: float | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(ours: float | str | None, other: float | str | None) -> str:
    if not isinstance(ours, float | int) or not isinstance(other, float | int) or not other:
        return "-"
    return f"{ours / other:.2f}"


def _cells(results: dict, row: Row) -> list[str]:
    values = {system: figure(results, row.figures.get(system)) for system in SYSTEMS}
    ratios = [
        "n/c"
        if system == "jobqueue" and not row.jobqueue_comparable
        else _ratio(values["ours"], values[system])
        for _, system in RATIOS
    ]
    return [row.label, *(fmt(values[system]) for system in SYSTEMS), *ratios]


def table(results: dict) -> str:
    header = ["scenario", *SYSTEMS, *(name for name, _ in RATIOS)]
    body = [_cells(results, row) for row in ROWS]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells)
        )

    out = [line(header), line(["-" * w for w in widths]), *(line(r) for r in body)]
    out.append(
        "n/c: not comparable (jobqueue's scheduler runs in the client process: no scheduler "
        "job to start or to end)"
    )
    return "\n".join(out)


def _environment(results: dict) -> list[str]:
    env = results["environment"]
    start = tuple(round(x, 2) for x in env["loadavg_at_start"])
    end = tuple(round(x, 2) for x in env.get("loadavg_at_end", ()))
    return [
        f"date {env['date']}  host {env['host']}  cpus {env['cpus']}  {env['slurm']}  "
        f"commit {env['commit']}",
        f"ours installed: {env['ours_installed']}",
        f"other users' jobs at start: {env['other_users_jobs_at_start']}, other "
        f"{SERVICE_ACCOUNT} gateway processes: {env['other_gateways_at_start']}; load average "
        f"start {start} end {end}",
    ]


def _new_cluster_runs(results: dict) -> list[str]:
    lines = []
    for system in ("ours", "stock", "jobqueue"):
        times = _get(results, "s1", system, "times")
        if times:
            runs = ", ".join(f"{t:.2f}" for t in times)
            lines.append(f"1. {system} new_cluster runs [s]: {runs}")
    floor = _get(results, "floor_scheduler", "floor", "times")
    if floor:
        lines.append(f"1. floor bare scheduler runs [s]: {', '.join(f'{t:.2f}' for t in floor)}")
    second = _get(results, "s1", "ours", "second_median")
    floor_median = _get(results, "floor_scheduler", "floor", "median")
    if isinstance(second, float) and isinstance(floor_median, float):
        lines.append(f"1b. ours again on the same env - floor: {second - floor_median:+.2f} s")
    return lines


def _floor(results: dict) -> list[str]:
    lines = []
    pair = _get(results, "floor_pair", "floor")
    if isinstance(pair, dict) and "pair" in pair:
        lines.append(
            f"floor: bare scheduler up {pair['scheduler_up']:.2f} s, scheduler + worker pair "
            f"connected {pair['pair']:.2f} s after sbatch; 16-task worker array connected "
            f"{pair['workers']:.2f} s after sbatch; scancel of the running scheduler, 17 "
            f"running and 100 held workers to empty queue {fmt(pair.get('teardown'))} s"
        )
    for n, key in ((100, "floor_array"), (500, "floor_array_500")):
        arr = _get(results, key, "floor")
        if isinstance(arr, dict) and arr.get("separate") is not None:
            lines += [
                f"floor: scancel of the held {n}-task array to empty queue "
                f"{fmt(arr['array_cancel'])} s",
                f"floor: {n} separate sbatch calls (one after the other) in squeue after "
                f"{arr['separate']:.2f} s, scancel of them to empty queue "
                f"{fmt(arr['separate_cancel'])} s",
            ]
    return lines


def _scale_shutdown(results: dict) -> list[str]:
    lines = []
    for system in ("ours", "stock", "jobqueue"):
        s2 = _get(results, "s2", system)
        if isinstance(s2, dict) and "scale_call" in s2:
            lines.append(
                f"2/4. {system}: scale() call returned after {s2['scale_call']:.2f} s; "
                f"shutdown call returned after {s2['shutdown_call']:.2f} s, worker jobs gone "
                f"after {fmt(s2.get('workers_gone'))} s, queue empty after "
                f"{fmt(s2['shutdown'])} s"
            )
    return lines


def _scale_latency(results: dict) -> list[str]:
    s6 = _get(results, "s6", "ours")
    if not isinstance(s6, dict) or "idle" not in s6:
        return []
    lines = [
        f"2b/4b. ours scale(500): call returned after {s6['scale_call']:.2f} s, 500 jobs in "
        f"squeue after {fmt(s6['scale'])} s; shutdown: worker jobs gone after "
        f"{fmt(s6.get('workers_gone'))} s, queue empty after {fmt(s6['shutdown'])} s"
    ]
    during = s6["during"]
    if during.get("requests"):
        lines.append(
            f"6. the requests 'during' span {during['window_s']:.1f} s from the scale(500) call "
            f"(until 5 s after all 500 were queued); the slowest started "
            f"{during['slowest_started_at_s']:.2f} s after the call"
        )
    for phase in ("idle", "during", "during_shutdown"):
        x = s6.get(phase, {})
        if x.get("requests"):
            lines.append(
                f"6. list_clusters {phase}: {x['requests']} requests, "
                f"p50 {x['p50_ms']:.1f} ms, p99 {x['p99_ms']:.1f} ms, max {x['max_ms']:.1f} ms"
            )
    return lines


def _rpc_step(system: str, label: str, m: dict) -> list[str]:
    calls = ", ".join(
        f"{c} {n:.1f}/min x {fmt(m['rpcs_per_call'].get(c))} RPCs"
        for c, n in m["calls_per_min"].items()
        if n
    )
    sdiag = ", ".join(f"{u} {c:.0f}" for u, c in sorted(m["sdiag_by_user_per_min"].items()))
    lines = [
        f"5. {system} {label} ({m['queued']} jobs queued, {m['window_s']:.0f} s): "
        f"{fmt(m['gateway_per_min'])} RPCs/min = calls {calls or 'none'}; as {USER} "
        f"{fmt(m['as_user_per_min'])}/min. sdiag, all users: {sdiag}"
    ]
    if m["other_gateways"]:
        lines.append(
            f"   (sdiag's {SERVICE_ACCOUNT} line also counts {len(m['other_gateways'])} "
            f"other {SERVICE_ACCOUNT} processes that were running, e.g. "
            f"{m['other_gateways'][0][:100]})"
        )
    return lines


def _rpcs(results: dict) -> list[str]:
    lines = []
    for system in ("ours", "stock"):
        s5 = _get(results, "s5", system)
        if isinstance(s5, dict) and "error" not in s5:
            for label, measured in s5.items():
                lines += _rpc_step(system, label, measured)
    return lines


def _ssh_vs_sudo(results: dict) -> list[str]:
    lines = []
    for system in ("sudo", "ssh"):
        times = _get(results, "s7", system, "times")
        s7b = _get(results, "s7b", system)
        if times:
            runs = ", ".join(f"{t:.2f}" for t in times)
            lines.append(f"7. ours through {system}: new_cluster runs [s]: {runs}")
        if isinstance(s7b, dict) and "scale_call" in s7b:
            lines.append(
                f"7. ours through {system}: scale(100) call returned after "
                f"{s7b['scale_call']:.2f} s, 100 jobs in squeue after {fmt(s7b['scale'])} s; "
                f"shutdown: worker jobs gone after {fmt(s7b.get('workers_gone'))} s, queue "
                f"empty after {fmt(s7b['shutdown'])} s"
            )
    return lines


def _submit_limit(results: dict) -> list[str]:
    s10 = _get(results, "s10", "ours")
    if not isinstance(s10, dict) or "queued" not in s10:
        return []
    return [
        f"10. ours under a QOS of 50: {s10['queued']} jobs queued after {fmt(s10['to_limit'])} "
        f"s (beside another cluster of 10 workers), {s10['held']} held; the user reads "
        f"{s10['pending_reason']!r}; after the other cluster's scale(0) fewer queued at "
        f"{fmt(s10['ended'])} s, back at 50 at {fmt(s10['refilled'])} s"
    ]


def _scancel(results: dict) -> list[str]:
    lines = []
    for system in ("ours", "stock"):
        s8 = _get(results, "s8", system)
        if isinstance(s8, dict) and "rounds" in s8:
            runs = "; ".join(
                f"replaced {fmt(r['replaced'])} s, {r['status']} {fmt(r['failed'])} s"
                for r in s8["rounds"]
            )
            lines.append(f"8. {system} (waits bounded to {s8['bound']:.0f} s): {runs}")
            lines.append(f"8. {system} connect() after the scancel: {s8['errors'][0]}")
    return lines


def _failures(results: dict) -> list[str]:
    return [f"FAILED {failure.splitlines()[0][:400]}" for failure in results.get("_failures", [])]


#: The sections of the details, in order.
DETAILS: list[Callable[[dict], list[str]]] = [
    _environment,
    _new_cluster_runs,
    _floor,
    _scale_shutdown,
    _scale_latency,
    _rpcs,
    _ssh_vs_sudo,
    _submit_limit,
    _scancel,
    _failures,
]


def details(results: dict) -> str:
    """Raw figures behind the table, one line each."""
    return "\n".join(line for section in DETAILS for line in section(results))


def print_report(results: dict, total: float) -> None:
    print()
    print(
        f"slurm-gateway benchmark, {results['environment']['date']} "
        f"(ratio = ours / other: below 1 means ours is faster or cheaper)"
    )
    print()
    print(table(results))
    print()
    print(details(results))
    print(f"total runtime {total:.0f} s")
