"""Write the benchmark's results: a Markdown table, a JSON file and an SVG chart of the ratios."""

import json
import math
import os
from xml.sax.saxutils import escape

COLUMNS = ("Case", "Metric", "webassets", "Floor", "Floor value", "Ratio", "Target", "Met")


def fmt_value(value, unit):
    """Format a measurement with its unit, at a precision that suits it."""
    if value is None:
        return "-"
    if unit == "count":
        return "%d" % value
    if unit == "ms":
        return ("%.2f ms" if value < 10 else "%.1f ms" if value < 100 else "%.0f ms") % value
    if unit == "MiB":
        return "%.1f MiB" % value
    return "%.0f %s" % (value, unit)


def fmt_ratio(ratio):
    if ratio is None:
        return "-"
    return "%.2fx" % ratio if ratio < 10 else "%.1fx" % ratio


def fmt_met(met):
    return {True: "yes", False: "**NO**", None: ""}[met]


def markdown_table(rows):
    """Return the results as a Markdown table (one line per row)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = (row["case"], row["metric"], fmt_value(row["value"], row["unit"]),
                 row["floor"] or "-", fmt_value(row["floor_value"], row["unit"])
                 if row["floor"] else "-", fmt_ratio(row["ratio"]), row["target"] or "",
                 fmt_met(row["met"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ms(value):
    return fmt_value(value, "ms")


def details(raw):
    """Return Markdown lines with the raw figures behind the table."""
    out = []
    small = raw.get("small_get")
    if small:
        out += ["## 64 KiB GET, every server", "",
                "| Concurrency | Server | req/s | p50 | p99 | errors | CPU per request |",
                "|---|---|---|---|---|---|---|"]
        for level in sorted(small, key=lambda key: int(key.split("=")[1])):
            for server, result in sorted(small[level].items()):
                out.append("| %s | %s | %.0f | %s | %s | %d | %s |" % (
                    level, server, result["rps"], _ms(result["p50_ms"]), _ms(result["p99_ms"]),
                    result["errors"], _ms(result.get("cpu_ms_per_request"))))
        out.append("")
    for name in ("big_get", "big_upload"):
        entry = raw.get(name)
        if entry:
            runs = "; ".join("%s: %s" % (server, ", ".join("%.0f" % rate for rate in rates))
                             for server, rates in sorted(entry["mb_s"].items()) if rates)
            out += ["%s of %d bytes, MB/s per repetition: %s." % (
                "GET" if name == "big_get" else "Upload", entry["size"], runs), ""]
    mixed = raw.get("mixed")
    if mixed:
        out += ["## Mixed load by request kind", "",
                "| Phase | Kind | requests | req/s | p50 | p99 | errors |",
                "|---|---|---|---|---|---|---|"]
        for phase in ("cold", "warm"):
            for kind, result in sorted(mixed[phase]["kinds"].items()):
                out.append("| %s | %s | %d | %.1f | %s | %s | %d |" % (
                    phase, kind, result["requests"], result["rps"], _ms(result["p50_ms"]),
                    _ms(result["p99_ms"]), result["errors"]))
        out.append("")
    out.extend(slow_details(raw.get("slow_clients")))
    out.extend(soak_details(raw.get("soak")))
    thumbs = raw.get("thumbnails")
    if thumbs:
        out += ["## Thumbnail floor commands", ""]
        for label, entry in sorted(thumbs.items()):
            if isinstance(entry, dict):
                out.append("- %s: `%s`" % (label, entry["floor_argv"]))
        out.append("")
    return out


def slow_details(slow):
    """Return Markdown lines: each slow-client variant's probes and what the attack did."""
    if not slow:
        return []
    out = ["## Slow clients: probes and attack", "",
           "| Variant | Phase | GETs | errors | p50 | p99 | max | /healthz p99 | max | errors |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for variant in slow["variants"]:
        for phase in ("quiet", "loaded"):
            get, health = variant[phase]["get"], variant[phase]["health"]
            out.append("| %s | %s | %d | %d | %s | %s | %s | %s | %s | %d |" % (
                variant["label"], phase, get["requests"], get["errors"], _ms(get["p50_ms"]),
                _ms(get["p99_ms"]), _ms(get["max_ms"]), _ms(health["p99_ms"]),
                _ms(health["max_ms"]), health["errors"]))
    out += ["", "Attack connections (trickle.py) at its end; progress = bytes moved / (count x "
            "rate x seconds the generator ran). Bytes sent can sit unread in the server's "
            "socket buffers: the downloads' progress and replies show whether it serves.", "",
            "| Variant | Kind | asked | connected | open | closed by server | reopened | "
            "replies | progress | generator CPU | server conns after teardown |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for variant in slow["variants"]:
        final = variant["attack_final"] or {}
        seconds = max(0.001, final.get("t", 0.0))
        cpu = "%.1f%%" % (100.0 * final.get("cpu_seconds", 0.0) / seconds)
        for kind, stats in sorted(final.get("kinds", {}).items()):
            rate = slow["rates"][kind]
            moved = stats["bytes_received"] if kind == "download" else stats["bytes_sent"]
            progress = 100.0 * moved / max(1.0, stats["target"] * rate * seconds)
            replies = ", ".join("%s x%d" % item for item in sorted(stats["statuses"].items()))
            out.append("| %s | %s | %d | %d | %d | %d | %d | %s | %.0f%% | %s | %s |" % (
                variant["label"], kind, stats["target"], stats["connected"], stats["open"],
                stats["closed_by_server"], stats["reopened"], replies or "none", progress,
                cpu, variant["server_connections_after_teardown"]))
    out.append("")
    return out


def soak_details(soak):
    """Return Markdown lines: the soak's requests by kind and each process's RSS over time."""
    if not soak:
        return []
    out = ["## Soak by request kind", "", "| Kind | requests | p50 | p99 | errors |",
           "|---|---|---|---|---|"]
    for kind, result in sorted(soak["load"]["kinds"].items()):
        out.append("| %s | %d | %s | %s | %d |" % (kind, result["requests"],
                                                   _ms(result["p50_ms"]), _ms(result["p99_ms"]),
                                                   result["errors"]))
    if soak["load"].get("error_examples"):
        out += ["", "First errors: " + "; ".join(soak["load"]["error_examples"])]
    out += ["", "RSS (MiB) of each webassets process, sampled every %g s (warm-up ends at "
            "%.0f s):" % (soak["sample_seconds"], soak["warmup_seconds"]), ""]
    names = sorted(soak["processes"])
    out.append("| t (s) | " + " | ".join(names) + " |")
    out.append("|---|" + "---|" * len(names))
    samples = soak["samples"]
    step = max(1, len(samples) // 20)  # at most about 20 lines
    for sample in samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else []):
        out.append("| %.0f | %s |" % (sample["t"], " | ".join(
            "%.1f" % (sample["rss_kib"][name] / 1024.0) if name in sample["rss_kib"] else "-"
            for name in names)))
    out.append("")
    return out


def markdown(meta, rows, notes, raw):
    """Return the whole results.md text."""
    out = ["# webassets benchmark", ""]
    out.append("Run %s on %s (%d CPUs, kernel %s), %s mode; server interpreter: %s." % (
        meta["date"], meta["cpu"], meta["cpus"], meta["kernel"],
        "quick" if meta["quick"] else "full", meta["server_python"]))
    out.append("Commit %s. Tools: %s." % (meta["commit"], ", ".join(
        "%s %s" % item for item in sorted(meta["tools"].items()))))
    out.append("")
    out.append("Ratio = webassets / floor, both measured in this run on the same files. "
               "For req/s and MB/s higher is better; for latencies lower is better.")
    out.append("")
    out.append(markdown_table(rows))
    out.append("")
    missed = [row for row in rows if row["met"] is False]
    met = [row for row in rows if row["met"] is True]
    out.append("Targets met: %d, missed: %d." % (len(met), len(missed)))
    out.append("")
    out.extend(details(raw))
    out.append("## Notes")
    out.append("")
    out.extend("- " + note for note in notes)
    out.append("")
    return "\n".join(out)


def write(out_dir, meta, rows, raw, notes):
    """Write results.md, results.json and ratios.svg; return the Markdown text."""
    text = markdown(meta, rows, notes, raw)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows, "raw": raw, "notes": notes}, f, indent=2,
                  sort_keys=True)
    with open(os.path.join(out_dir, "ratios.svg"), "w") as f:
        f.write(svg(rows))
    return text


def svg(rows, width=900, bar_height=18):
    """Return an SVG bar chart of each ratio on a log scale around 1x (stdlib only)."""
    rows = [row for row in rows if row["ratio"]]
    label_width, low, high = 360, -5.0, 6.0  # log2 range: 1/32x .. 64x
    plot = width - label_width - 20

    def x(ratio):
        value = min(high, max(low, math.log(ratio, 2)))
        return label_width + (value - low) / (high - low) * plot

    height = 56 + bar_height * len(rows)
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
             'font-family="sans-serif" font-size="11">' % (width, height),
             '<text x="10" y="16" font-size="13">webassets / floor (log scale; green: target '
             'met, red: missed, grey: no target)</text>']
    for power in range(int(low), int(high) + 1):
        gx = x(2.0 ** power)
        parts.append('<line x1="%.1f" y1="24" x2="%.1f" y2="%d" stroke="%s"/>'
                     % (gx, gx, height - 18, "#000" if power == 0 else "#ddd"))
        tick = "%dx" % 2 ** power if power >= 0 else "1/%dx" % 2 ** -power
        parts.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#666">%s</text>'
                     % (gx, height - 4, tick))
    for index, row in enumerate(rows):
        y = 30 + index * bar_height
        # Only a target stated as a ratio colours its bar; '< 100 ms' is judged on the value.
        judged = row["met"] if "x" in (row["target"] or "") else None
        colour = {True: "#3a3", False: "#c33", None: "#999"}[judged]
        one, end = x(1.0), x(row["ratio"])
        label = "%s, %s vs %s" % (row["case"], row["metric"], row["floor"])
        parts.append('<text x="%d" y="%d" text-anchor="end">%s</text>'
                     % (label_width - 6, y + 12, escape(label[:60])))
        parts.append('<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"/>'
                     % (min(one, end), y + 2, max(1.0, abs(end - one)), bar_height - 5, colour))
        parts.append('<text x="%.1f" y="%d" fill="#333">%s</text>'
                     % (max(one, end) + 3, y + 12, fmt_ratio(row["ratio"])))
    parts.append("</svg>\n")
    return "\n".join(parts)
