"""A run's outputs: the JSON result, a short Markdown summary and optional PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:,.2f}"


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}"


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    order = result["order"]
    lines = [
        f"# Load test: {result['scenario']} ({result['run_id']})",
        "",
        f"- target: `{result['target']}`, started {result.get('started_at', '?')}",
        f"- shape: {cfg['rooms']} rooms x {cfg['clients']} clients"
        + (
            f", {cfg['senders']} senders/room, "
            + (
                f"window {cfg['window']} (closed loop)"
                if cfg["window"]
                else f"{cfg['rate']:g} msg/s/room"
            )
            + f", {cfg['size']}-char bodies"
            if result["scenario"] in ("fanout", "reconnect-resume")
            else ""
        )
        + f", {cfg['duration']:g}s, {cfg['procs']} generator process(es)",
        f"- order check: **{'passed' if order['ok'] else 'FAILED'}** "
        f"({order['counts'].get('ok', 0)}/{order['clients_checked']} clients saw every seq once, "
        f"in order; {order['messages_stored']} messages stored)",
    ]
    for example in order["examples"]:
        lines.append(f"  - {example}")
    connect, publish, delivery = result["connect"], result["publish"], result["delivery"]
    lines += [
        "",
        "| measure | value |",
        "|---|---|",
        f"| connections | {connect['ok']:,} ok, {connect['failed']:,} failed, "
        f"{_num(connect['per_s'])}/s |",
        f"| connect time p50 / p99 / max (ms) | {_ms(connect['time_ms']['p50'])} / "
        f"{_ms(connect['time_ms']['p99'])} / {_ms(connect['time_ms']['max'])} |",
        f"| presence frames received | {connect['presence_frames']:,} "
        f"({_num(connect['presence_mb'])} MiB) |",
    ]
    if publish["sent"]:
        lat = delivery["latency_ms"]
        lines += [
            f"| published / acked | {publish['sent']:,} / {publish['acked']:,} "
            f"({_num(publish['acked_per_s'])}/s) |",
            f"| deliveries | {_deliveries(delivery)}; "
            f"**{_num(delivery['per_s'])}/s** in the sending window |",
            "| latency p50 / p90 / p99 / p99.9 / max (ms) | "
            + " / ".join(_ms(lat[k]) for k in ("p50", "p90", "p99", "p99.9", "max"))
            + " |",
            f"| ack latency p50 / p99 (ms) | {_ms(publish['ack_ms']['p50'])} / "
            f"{_ms(publish['ack_ms']['p99'])} |",
            f"| generator send lag p99 (ms) | {_ms(publish['send_lag_ms']['p99'])} |",
        ]
    reconnect = result["reconnect"]
    if reconnect["drops"]:
        lines.append(
            f"| drops / reconnects | {reconnect['drops']:,} / {reconnect['reconnects']:,}; "
            f"replayed {delivery['replayed']:,} messages; reconnect p50 "
            f"{_ms(reconnect['time_ms']['p50'])} ms |"
        )
    wake = result.get("wake_probe")
    if wake:
        lines.append(
            f"| wake probe ({wake['rooms']} rooms): first / second publish ack p50 (ms) | "
            f"{_ms(wake['cold_ms']['p50'])} / {_ms(wake['warm_ms']['p50'])} "
            f"(added {_ms(wake['added_median_ms'])}) |"
        )
    server = result.get("server")
    if server:
        lines.append(
            f"| server CPU s (sending) / peak RSS MB | {_num(server.get('cpu_s_sending'))} / "
            f"{_num(server.get('peak_rss_mb'))} |"
        )
        if server.get("cpu_wait_s_sending") is not None:
            lines.append(
                "| server waiting for a CPU s (sending; runnable, another process on it) | "
                f"{_num(server['cpu_wait_s_sending'])} |"
            )
        if server.get("rss_per_connection_kb") is not None:
            lines.append(f"| server RSS per connection (KiB) | {server['rss_per_connection_kb']} |")
    gen = result["generator"]
    lines.append(
        f"| generator CPU s (sending) / utilisation | {_num(gen['cpu_s_sending'])} / "
        f"{_num(gen['cpu_util_sending'])} |"
    )
    errors = result["errors"]
    lines += [
        "",
        "Errors by code: "
        + (", ".join(f"`{k}` {v:,}" for k, v in errors.items()) if errors else "none"),
        "",
    ]
    return "\n".join(lines)


def _deliveries(delivery: dict[str, Any]) -> str:
    """Live deliveries and, after reconnects, those replayed with `since`: together they make
    up what was expected (each stored message once per client of its room)."""
    live, replayed, expected = delivery["deliveries"], delivery["replayed"], delivery["expected"]
    if not replayed:
        return f"{live:,} of {expected:,} expected"
    return (
        f"{live:,} live + {replayed:,} replayed after reconnects = {live + replayed:,} "
        f"of {expected:,} expected"
    )


def _plain_log_axis(axis: Any) -> None:
    """Log-scale ticks at 1, 2, 5 x 10^n written as plain numbers (no "6x10^0")."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def plot(result: dict[str, Any], stem: Path) -> list[Path]:
    """Latency over time and the latency distribution as PNGs (needs matplotlib)."""
    import matplotlib.pyplot as plt

    written: list[Path] = []
    for suffix, fig in figures(result):
        path = stem.with_name(f"{stem.name}-{suffix}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def figures(result: dict[str, Any]) -> list[tuple[str, Any]]:
    """The plots as matplotlib figures, each with its file-name suffix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[tuple[str, Any]] = []
    rows = [r for r in result["timeline"] if r["count"]]
    title = f"{result['scenario']} {result['run_id']}"
    if rows:
        fig, ax = plt.subplots(figsize=(8, 4))
        t = [r["t"] for r in rows]
        for key in ("p50", "p99", "max"):
            ax.plot(t, [r[key] for r in rows], label=key, marker=".")
        ax.set_yscale("log")
        _plain_log_axis(ax.yaxis)
        ax.set_xlabel("seconds since start")
        ax.set_ylabel("publish-to-delivery latency (ms)")
        ax.set_title(f"latency over time: {title}")
        ax.grid(True, which="both", alpha=0.3)
        ax2 = ax.twinx()
        ax2.bar(
            t,
            [r["count"] for r in rows],
            alpha=0.15,
            color="grey",
            label="deliveries per second (bars, right axis)",
        )
        ax2.set_ylabel("deliveries per second")
        ax.set_zorder(ax2.get_zorder() + 1)  # the lines over the bars
        ax.patch.set_visible(False)
        lines, labels = ax.get_legend_handles_labels()
        bars, bar_labels = ax2.get_legend_handles_labels()
        ax.legend(lines + bars, labels + bar_labels, loc="upper left", fontsize="small")
        made.append(("latency-time", fig))
    dist = result["latency_histogram"]
    if dist:
        fig, ax = plt.subplots(figsize=(8, 4))
        values = [d[0] for d in dist]
        counts = [d[1] for d in dist]
        total = sum(counts)
        cumulative, acc = [], 0
        for n in counts:
            acc += n
            cumulative.append(acc / total)
        ax.plot(values, cumulative, drawstyle="steps-post")
        ax.set_xscale("log")
        _plain_log_axis(ax.xaxis)
        ax.set_xlabel("publish-to-delivery latency (ms)")
        ax.set_ylabel("fraction of deliveries at or below")
        ax.set_title(f"latency distribution (CDF): {title}")
        lat = result["delivery"]["latency_ms"]
        for key in ("p50", "p99", "p99.9"):
            if lat.get(key) is not None:
                ax.axvline(lat[key], linestyle="--", alpha=0.5)
                ax.annotate(key, (lat[key], 0.05), rotation=90)
        ax.grid(True, which="both", alpha=0.3)
        made.append(("latency-dist", fig))
    return made
