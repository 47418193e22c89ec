"""The rich rendering of a correlation report: the one-screen summary, and the full tables.

:func:`render_summary` is what a sweep prints at its end (at most about 40 lines at 120 columns): the population, the
analysis plan, the verdict on each primary hypothesis (rho, CI, reliability, the disattenuated rho, and the n that
would decide it), the five strongest exploratory rows by q-value, the train-loss confound in one line, the power of
the primary tests, and where the full tables are.

:func:`render` with ``full`` is everything (``python -m tracking.correlate --full``). Layout: a header line with
the population's bookkeeping and the plan, the primary verdicts; then, per generalization target, one table with
the measures as rows (rho with its CI, tau, raw p and the p adjusted in its family, the partial rhos, granulated
Kendall, within-lr and within-seed mean rho, reliability, n and missing, a Simpson marker) followed by one
plain-words verdict line per measure; then the power note. One table per target keeps each table narrow enough to
read; a target column group would make a table four times as wide.

Colours: a coefficient is magenta when positive and cyan when negative, bold when significant (adjusted in its
family for the pooled rho, raw for the partial ones) and dim when not. An adjusted p below alpha is bold green.
"""

from __future__ import annotations

import io
import math

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from landscape_core import keys
from landscape_core.invariance import INVARIANT_RATIO
from tracking.correlation import CorrelationEntry, CorrelationReport, PrimaryResult, decided_tests
from tracking.invariance import format_ratio
from tracking.reliability import LOW_RELIABILITY

__all__ = ["PRIMARY_MARK", "SIMPSON_MARK", "TOP_EXPLORATORY", "render", "render_summary", "render_text"]

SIMPSON_MARK = "⚠"
PRIMARY_MARK = "★"
#: The summary lists this many exploratory rows (smallest q first).
TOP_EXPLORATORY = 5
_VERDICT_STYLE = {
    "supported": "bold green",
    "not beyond train loss": "yellow",
    "only given train loss": "yellow",
    "contradicted": "bold red",
    "undecided": "bold yellow",
    "not supported": "bold red",
    "undecided (going on)": "bold yellow",
    "contradicted given train loss": "bold red",
}


def _coef_style(value: float, significant: bool) -> str:
    if not math.isfinite(value):
        return "dim"
    colour = "magenta" if value > 0 else "cyan" if value < 0 else ""
    return f"bold {colour}".strip() if significant else f"dim {colour}".strip()


def _coef(value: float | None, significant: bool = False) -> Text:
    if value is None or not math.isfinite(value):
        return Text("–", style="dim")
    return Text(f"{value:+.2f}", style=_coef_style(value, significant))


def _p(value: float, alpha: float, holm: bool = False) -> Text:
    if not math.isfinite(value):
        return Text("–", style="dim")
    text = _fmt_p(value)
    if value < alpha:
        return Text(text, style="bold green" if holm else "green")
    return Text(text, style="dim")


def _reliability(value: float) -> Text:
    if not math.isfinite(value):
        return Text("–", style="dim")
    return Text(f"{value:.2f}", style="bold red" if value < LOW_RELIABILITY else "green")


def _rho_ci(entry: CorrelationEntry) -> Text:
    row = entry.row
    if not math.isfinite(row.spearman):
        return Text("–", style="dim")
    text = Text(f"{row.spearman:+.2f}", style=_coef_style(row.spearman, entry.significant))
    if math.isfinite(row.ci_low) and math.isfinite(row.ci_high):
        text.append(f" [{row.ci_low:+.2f},{row.ci_high:+.2f}]", style="dim")
    return text


def _n(entry: CorrelationEntry) -> Text:
    text = Text(str(entry.row.n))
    if entry.missing:
        text.append(f" ({entry.missing} miss)", style="yellow")
    if entry.flagged:
        text.append(f" ({entry.flagged} flag)", style="yellow")
    return text


def _invariance(entry: CorrelationEntry) -> Text:
    """The audit's verdict on the measure: ``✓ x1.00`` (invariant), ``✗ x11.7`` (not), ``–`` (not audited)."""
    if entry.invariant is None:
        return Text("–", style="dim")
    if entry.invariant:
        return Text(f"✓ {format_ratio(entry.invariance_ratio)}", style="green")
    return Text(f"✗ {format_ratio(entry.invariance_ratio)}", style="bold red")


def _population_line(report: CorrelationReport) -> Text:
    pop = report.population
    text = Text("Population: ", style="bold")
    text.append(f"{pop.get('source') or 'runs'} — {report.n_runs} finished runs")
    not_finished = pop.get("n_not_finished") or {}
    if not_finished:
        text.append("; not finished: " + ", ".join(f"{k} {v}" for k, v in not_finished.items()), style="yellow")
    if pop.get("n_duplicates"):
        text.append(f"; {pop['n_duplicates']} duplicate retr{'ies' if pop['n_duplicates'] != 1 else 'y'} dropped")
    axes = (["seed"] if report.seed_varies else []) + list(report.axes or (["lr"] if report.lr_varies else []))
    text.append(f"; varying: {', '.join(axes) or 'nothing'}")
    return text


def _table(report: CorrelationReport, target: str, entries: list[CorrelationEntry]) -> Table:
    show_lr = report.lr_varies
    show_seed = report.seed_varies and any(math.isfinite(e.within_seed_mean) for e in entries)
    show_gran = any(e.row.granulated_kendall is not None for e in entries)
    show_inv = any(e.invariant is not None for e in entries)
    table = Table(title=f"{target} ({report.targets[target]}) vs each measure", header_style="bold")
    table.add_column("measure", no_wrap=True)
    table.add_column("n", justify="right", no_wrap=True)
    table.add_column("ρ [CI]", justify="right", no_wrap=True)
    table.add_column("τ", justify="right")
    table.add_column("p", justify="right")
    table.add_column("adj p", justify="right")
    table.add_column("ρ|TL", justify="right")
    if show_lr:
        table.add_column("ρ|TL+lr", justify="right", no_wrap=True)
    if show_gran:
        table.add_column("Ψ", justify="right")
    if show_lr:
        table.add_column("in lr", justify="right", no_wrap=True)
    if show_seed:
        table.add_column("in seed", justify="right", no_wrap=True)
    if show_inv:
        table.add_column("invariant", justify="right", no_wrap=True)
    show_rel = any(math.isfinite(e.reliability) for e in entries)
    if show_rel:
        table.add_column("r", justify="right", no_wrap=True)
        table.add_column("ρ/√r", justify="right", no_wrap=True)
    table.add_column(SIMPSON_MARK, justify="center")
    for entry in entries:
        row = entry.row
        cells: list[Text] = [
            Text(f"{PRIMARY_MARK} {entry.measure}" if entry.primary else entry.measure, style="bold" * entry.primary),
            _n(entry),
            _rho_ci(entry),
            _coef(row.kendall),
            _p(row.verdict_p, report.alpha),
            _p(entry.adjusted_p, report.alpha, holm=True),
            _coef(row.partial_spearman, math.isfinite(row.partial_p) and row.partial_p < report.alpha),
        ]
        if show_lr:
            significant = math.isfinite(entry.partial_lr_p) and entry.partial_lr_p < report.alpha
            cells.append(_coef(entry.partial_lr_spearman, significant))
        if show_gran:
            cells.append(_coef(row.granulated_kendall))
        if show_lr:
            cells.append(_coef(entry.within_lr_mean))
        if show_seed:
            cells.append(_coef(entry.within_seed_mean))
        if show_inv:
            cells.append(_invariance(entry))
        if show_rel:
            cells += [_reliability(entry.reliability), _coef(entry.disattenuated)]
        cells.append(
            Text(SIMPSON_MARK + " " + "+".join(entry.simpson_axes), style="bold yellow") if entry.simpson else Text("")
        )
        table.add_row(*cells)
    return table


def _legend(report: CorrelationReport) -> Text:
    level = round(100 * (1 - report.alpha))
    ci_kind = "cluster bootstrap over lr" if report.lr_varies else "BCa bootstrap"
    parts = [
        f"ρ: Spearman [{level}% CI, {ci_kind}]",
        "τ: Kendall",
        "p: permutation p when n < 30, else Spearman's",
        f"adj p: {PRIMARY_MARK} primary rows Holm over the plan's {len(report.plan.tests)} primary tests, every "
        "other row exploratory: Benjamini-Hochberg q",
        "ρ|TL: partial ρ given final train loss",
    ]
    if report.lr_varies:
        parts += ["ρ|TL+lr: given train loss and log lr", "in lr: n-weighted mean ρ inside each lr (groups >= 4 runs)"]
    if any(e.row.granulated_kendall is not None for e in report.entries):
        parts.append("Ψ: granulated Kendall (Jiang et al. 2019)")
    if report.seed_varies:
        parts.append("in seed: the same inside each seed")
    if any(e.invariant is not None for e in report.entries):
        parts.append(
            f"invariant: max/min of the measure over function-preserving rescalings of one minimum "
            f"(✓ <= {INVARIANT_RATIO:g}; the parent run's invariance audit)"
        )
    if report.reliability:
        parts.append(
            f"r: test-retest Spearman of the measure (reliability audit; red below {LOW_RELIABILITY:g}); ρ/√r: the "
            "rho disattenuated for the measure's noise"
        )
    parts.append(f"{SIMPSON_MARK}: pooled sign disagrees with the within-group sign (Simpson)")
    if any(report.flagged.values()):
        how = "excluded" if report.exclude_flagged else "included; --exclude-flagged drops them"
        parts.append(f"flag: runs whose estimate did not converge or was not bracketed ({how})")
    return Text("; ".join(parts), style="dim")


def _pairs_table(report: CorrelationReport) -> Table:
    """The paper's A-versus-B question per measure: in what fraction of pairs the flatter model has the lower test
    loss (cluster-bootstrap CI over runs), and Dziugaite et al.'s sign-error over environments."""
    level = round(100 * (1 - report.alpha))
    table = Table(
        title="The paper's A-versus-B question: is the flatter of two minima the better one?", header_style="bold"
    )
    for name, justify in (("measure", "left"), ("pairs", "right"), (f"flatter wins [{level}% CI]", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    table.add_column("sign-error mean / worst (environments)", justify="right", no_wrap=True)
    for q in report.pairs:
        a, e = q.agreement, q.sign_error
        if math.isfinite(a.fraction):
            wins = Text(f"{a.fraction:.0%}", style="bold" if a.ci_low > 0.5 or a.ci_high < 0.5 else "")
            wins.append(f" [{a.ci_low:.0%},{a.ci_high:.0%}]", style="dim")
        else:
            wins = Text("–", style="dim")
        errors = f"{e.mean:.2f} / {e.worst:.2f} ({e.n_environments})" if math.isfinite(e.mean) else "–"
        table.add_row(q.measure, str(a.n_pairs), wins, errors)
    return table


def _reliability_table(report: CorrelationReport) -> Table:
    """Each re-measured measure's test-retest Spearman with its bootstrap CI and the within/between variance ratio."""
    n = max((r.n for r in report.reliability.values()), default=0)
    table = Table(
        title=f"Reliability: each measure re-measured on independent images ({n} minima)", header_style="bold"
    )
    for name, justify in (("measure", "left"), ("test-retest ρ [95% CI]", "right"), ("within / between", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    for key, r in sorted(
        report.reliability.items(), key=lambda kv: -kv[1].spearman if math.isfinite(kv[1].spearman) else 2
    ):
        text = _reliability(r.spearman)
        if math.isfinite(r.ci_low):
            text.append(f" [{r.ci_low:+.2f},{r.ci_high:+.2f}]", style="dim")
        table.add_row(key, text, f"{r.variance_ratio:.3g}" if math.isfinite(r.variance_ratio) else "–")
    return table


def _verdict_line(entry: CorrelationEntry) -> Text:
    style = "bold" if entry.significant else ""
    text = Text("  • ")
    text.append(entry.measure, style=style)
    text.append(": ")
    text.append(entry.verdict, style="yellow" if entry.simpson else "")
    return text


def render(report: CorrelationReport, console: Console, *, full: bool = True, where: str = "") -> None:
    """Print the report. ``full``: population line, the primary verdicts, one table and its verdict lines per
    target, the A-versus-B table, the legend and the power note. Otherwise the one-screen summary
    (:func:`render_summary`, with ``where`` saying where the full tables are).

    An empty report (too few runs) prints its message instead.
    """
    if not full:
        render_summary(report, console, where=where)
        return
    console.print(_population_line(report))
    if not report.entries:
        console.print(Text(report.message or "no rows", style="yellow"))
        console.print(Text(report.power_note, style="italic"))
        return
    console.print(_plan_line(report))
    console.print(_primary_table(report))
    if report.plan.sequential is not None:
        console.print(_sequential_line(report))
    for target in report.targets:
        entries = report.for_target(target)
        console.print()
        console.print(_table(report, target, entries))
        for entry in entries:
            console.print(_verdict_line(entry))
    if report.reliability:
        console.print()
        console.print(_reliability_table(report))
    if report.pairs:
        console.print()
        console.print(_pairs_table(report))
        for question in report.pairs:
            console.print(Text(f"  • {question.sentence}"))
    console.print()
    console.print(_legend(report))
    note = Text("Power: ", style="bold")
    note.append(report.power_note, style="italic")
    missing = {k: v for k, v in report.missing.items() if v}
    if missing:
        note.append("; rows with missing values have less power", style="italic")
    console.print(note)


def _sequential_line(report: CorrelationReport) -> Text:
    """The group-sequential design and where it stopped, with the last look's z against its bounds."""
    design, looks = report.sequential.get("design", {}), report.sequential.get("looks", [])
    plan = report.plan.sequential
    sizes = design.get("looks") or (list(plan.looks) if plan else [])
    rho = design.get("planned_rho", plan.planned_rho if plan else float("nan"))
    text = Text("Until decided: ", style="bold")
    power = design.get("power_at_planned")
    at_cap = f", power {power:.0%} at that rho with this cap" if power is not None else ""
    text.append(
        f"looks at n = {', '.join(map(str, sizes))} (O'Brien-Fleming alpha spending, futility at rho {rho:g}{at_cap}); "
    )
    stop = report.sequential.get("stopped")
    text.append(
        stop or "INTERIM: not a decision yet (" + (looks[-1]["reason"] if looks else "no look yet") + ")",
        style="bold" if stop else "bold yellow",
    )
    decided = decided_tests(report.sequential)
    if decided:
        parts = [
            f"{name.split(':')[0].rsplit('/', 1)[-1]}{'|TL' if '|' in name else ''} {h['decision']} at n={h['n']} "
            f"(rho {h['rho']:+.2f}, repeated CI [{_bound(h['rci'][0])}, {_bound(h['rci'][1])}])"
            for name, h in decided.items()
        ]
        text.append("; " + ", ".join(parts), style="dim")
    text.append("; the table's rho, CI and p describe all finished runs, the verdicts are the looks'", style="dim")
    return text


def _bound(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


def _plan_line(report: CorrelationReport) -> Text:
    plan = report.plan
    text = Text("Plan: ", style="bold")
    style = "" if plan.declared_in_advance else "bold yellow"
    text.append(plan.summary(), style=style)
    return text


def _fmt_p(value: float) -> str:
    if not math.isfinite(value):
        return "–"
    return f"{value:.2g}" if value >= 1e-3 else f"{value:.0e}"


def _summary_table(title: str) -> Table:
    """The summary's compact table style: a rule under the header, no borders, the title on the left."""
    return Table(
        title=title,
        box=box.SIMPLE_HEAD,
        header_style="bold",
        title_justify="left",
        pad_edge=False,
        collapse_padding=True,
    )


def _primary_table(report: CorrelationReport) -> Table:
    """One row per primary hypothesis: rho [CI], rho given train loss, the two Holm p, reliability, the
    disattenuated rho, the verdict and the n that would decide it."""
    level = round(100 * (1 - report.alpha))
    title = f"Primary hypotheses: larger measure, larger {_targets(report)} (Holm over {len(report.plan.tests)} tests)"
    table = _summary_table(title)
    table.add_column("hypothesis", no_wrap=True)
    table.add_column(f"ρ [{level}% CI]", justify="right", no_wrap=True)
    table.add_column("ρ|TL", justify="right")
    table.add_column("Holm p raw/TL", justify="right", no_wrap=True)
    table.add_column("r", justify="right")
    table.add_column("ρ/√r", justify="right")
    table.add_column("verdict", no_wrap=True)
    sequential = report.plan.sequential is not None
    table.add_column("decided" if sequential else "n needed", justify="right")
    for result in report.primary:
        table.add_row(*_primary_cells(result, report.alpha, sequential))
    return table


def _targets(report: CorrelationReport) -> str:
    targets = sorted({h.target.replace("_", " ") for h in report.plan.hypotheses})
    return " / ".join(targets)


def _primary_cells(result: PrimaryResult, alpha: float, sequential: bool) -> list[Text]:
    entry, h = result.entry, result.hypothesis
    name = h.measure if h.target == "test_loss" else h.name
    name = name if h.direction > 0 else f"-{name}"
    needed = result.n_to_decide
    if sequential:
        last = Text("–" if needed is None else f"at n = {needed}", style="dim")
    else:
        last = Text("decided" if needed == 0 else "–" if needed is None else f"{needed}", style="dim" * (needed == 0))
    return [
        Text(name, style="bold"),
        _rho_ci(entry),
        _coef(result.partial_rho, math.isfinite(result.adjusted_partial) and result.adjusted_partial < alpha),
        Text(f"{_fmt_p(result.adjusted_raw)} / {_fmt_p(result.adjusted_partial)}"),
        _reliability(entry.reliability),
        _coef(entry.disattenuated),
        Text(result.verdict, style=_VERDICT_STYLE.get(result.verdict, "")),
        last,
    ]


def _exploratory_table(report: CorrelationReport) -> Table:
    rows = [e for e in report.exploratory if math.isfinite(e.adjusted_p)][:TOP_EXPLORATORY]
    significant = sum(e.significant for e in report.exploratory)
    table = _summary_table(
        f"Strongest exploratory rows ({significant} of {len(report.exploratory)} with q < {report.alpha:g}; "
        "Benjamini-Hochberg)"
    )
    for name, justify in (("measure", "left"), ("target", "left"), ("ρ [CI]", "right"), ("q", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    table.add_column("ρ|TL", justify="right")
    table.add_column("r", justify="right")
    table.add_column("invariant", justify="right", no_wrap=True)
    for entry in rows:
        table.add_row(
            Text(entry.measure),
            Text(entry.target),
            _rho_ci(entry),
            _p(entry.adjusted_p, report.alpha, holm=True),
            _coef(
                entry.row.partial_spearman, math.isfinite(entry.row.partial_p) and entry.row.partial_p < report.alpha
            ),
            _reliability(entry.reliability),
            _invariance(entry),
        )
    return table


def _confound_line(report: CorrelationReport) -> Text:
    """The train-loss confound in one line: how well train loss alone ranks the test loss, and how many
    significant exploratory rows lose their partial rho given it."""
    text = Text("Confound: ", style="bold")
    try:
        control = report.entry(keys.CONTROL, "test_loss")
    except KeyError:
        return text.append("no train loss logged", style="dim")
    text.append(f"train loss alone ranks the test loss at rho {control.row.spearman:+.2f}; ")
    significant = [e for e in report.exploratory if e.significant]
    vanish = sum(1 for e in significant if math.isfinite(e.row.partial_p) and e.row.partial_p >= report.alpha)
    text.append(f"{vanish} of {len(significant)} significant exploratory rows vanish given train loss (ρ|TL)")
    return text


def _grouped(names: list[str]) -> str:
    """Keys joined, those that share a parent written once: ``a/b/{x, y}``."""
    parents: dict[str, list[str]] = {}
    for name in names:
        parent, _, leaf = name.rpartition("/")
        parents.setdefault(parent, []).append(leaf)
    return ", ".join(
        f"{parent}/{leaves[0]}" if len(leaves) == 1 else f"{parent}/{{{', '.join(leaves)}}}"
        for parent, leaves in parents.items()
    )


def render_summary(report: CorrelationReport, console: Console, *, where: str = "") -> None:
    """The answer on one screen (at most about 40 lines at 120 columns): population, plan, primary verdicts,
    the strongest exploratory rows, the confound, the power and where the full tables are."""
    console.print(_population_line(report))
    if not report.entries:
        console.print(Text(report.message or "no rows", style="yellow"))
        return
    console.print(_plan_line(report))
    console.print(_primary_table(report))
    if report.plan.sequential is not None:
        console.print(_sequential_line(report))
    console.print(_exploratory_table(report))
    console.print(_confound_line(report))
    note = Text("Power: ", style="bold")
    note.append(report.power_note)
    console.print(note)
    low = sorted(k for k, r in report.reliability.items() if r.low)
    if low:
        console.print(Text(f"Low reliability (r < {LOW_RELIABILITY:g}): {_grouped(low)}", style="yellow"))
    if where:
        console.print(Text(f"Full tables: {where}", style="dim"))


def render_text(report: CorrelationReport, width: int = 160) -> str:
    """The rendered report as plain text (for the ``correlation.txt`` artifact)."""
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    render(report, console, full=True)
    return console.export_text()
