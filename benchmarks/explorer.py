"""The explorer's pages in headless Chromium: size, load time, the time one slider step and one sampler-menu choice
take to redraw, and a screenshot of each (Playwright driving Debian's Chromium; software rendering, no GPU).

Pages: the docs' page (drawn from ``docs/data/explorer.npz``), the exact-score pages of ``scoresde explore --toy``
under VP and VE at the command's defaults, and any ``--page FILE`` (e.g. the demo's ``explorer.html``).

    python benchmarks/explorer.py [--page scoresde-out/explorer.html] [--quick]
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import benchmark_parser, parse, setup_run, write_report

from scoresde.app.explorer import FIGURE_IDS, write_explorer
from scoresde.app.explorer_data import ExplorerData

ROOT = Path(__file__).parents[1]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]  # fmt: skip

STEP_JS = """async (frames) => {
  const gd = document.getElementById('explorer-time'), out = [];
  for (const j of frames) {
    const t0 = performance.now();
    await Plotly.animate(gd, [String(j)], {mode: 'immediate', frame: {duration: 0, redraw: true},
                                           transition: {duration: 0}});
    await new Promise(r => requestAnimationFrame(() => r()));
    out.push(performance.now() - t0);
  }
  return out;
}"""
MENU_JS = """async () => {
  const gd = document.getElementById('explorer-samplers');
  if (!gd) return [];
  const out = [];
  for (const button of gd.layout.updatemenus[0].buttons) {
    const t0 = performance.now();
    await Plotly.update(gd, ...button.args);
    await new Promise(r => requestAnimationFrame(() => r()));
    out.push(performance.now() - t0);
  }
  return out;
}"""


def measure(browser, path: Path, shot: Path) -> dict:
    """Load ``path`` (offline) and time its slider steps (every frame, twice over) and menu choices."""
    page = browser.new_page(viewport={"width": 1450, "height": 1000})
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file://") else r.abort())
    start = time.perf_counter()
    page.goto(path.as_uri())
    for name in FIGURE_IDS[:1]:
        page.wait_for_selector(f"#{name} .main-svg")
    load = time.perf_counter() - start
    frames = page.evaluate("document.getElementById('explorer-time').layout.sliders[0].steps.length")
    order = [j for j in range(frames)] + [j for j in range(frames - 1, -1, -1)]
    steps = page.evaluate(STEP_JS, order[1:])
    menu = page.evaluate(MENU_JS)
    page.evaluate(STEP_JS, [int(0.45 * (frames - 1))])  # t near 0.2: the data's structure half formed
    page.locator("#explorer-time").screenshot(path=str(shot))
    page.close()
    return {
        "page": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name),
        "megabytes": path.stat().st_size / 1e6,
        "load_seconds": load,
        "frames": frames,
        "step_ms_median": statistics.median(steps),
        "step_ms_p90": sorted(steps)[int(0.9 * (len(steps) - 1))],
        "menu_ms_median": statistics.median(menu) if menu else None,
        "menu_choices": len(menu),
        "console_errors": problems,
        "screenshot": shot.name,
    }


def markdown(report: dict) -> str:
    rows = [
        "| page | size (MB) | load (s) | slider positions | slider step (ms, median / p90) | sampler menu (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["pages"]:
        menu = f"{r['menu_ms_median']:.0f} ({r['menu_choices']} choices)" if r["menu_ms_median"] else "-"
        rows.append(f"| {r['name']} | {r['megabytes']:.2f} | {r['load_seconds']:.2f} | {r['frames']} | "
                    f"{r['step_ms_median']:.0f} / {r['step_ms_p90']:.0f} | {menu} |")  # fmt: skip
    return (
        "\n".join(rows)
        + f"\n\nHeadless Chromium {report['chromium']} (software rendering, no GPU) on {report['machine']}; a step "
        "is `Plotly.animate` to the next slider position until the next animation frame, over every position and "
        "back; a menu choice is `Plotly.update` with the menu item's arguments. Console errors: "
        f"{sum(len(r['console_errors']) for r in report['pages'])}.\n"
    )


def plot(report: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    names = [r["name"] for r in report["pages"]]
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.5 * len(names)))
    ax.barh(names, [r["step_ms_median"] for r in report["pages"]], color="C0", label="slider step (median)")
    ax.barh(names, [r["step_ms_p90"] for r in report["pages"]], color="C0", alpha=0.3, label="slider step (p90)")
    ax.set_xlabel("ms (headless Chromium, software rendering)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = benchmark_parser(__doc__, quick="the docs' page only")
    parser.add_argument("--page", action="append", default=[], help="another explorer page to measure (repeatable)")
    args = parse(parser)
    out = setup_run(args)
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("explorer benchmark: no Chromium (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp())
    pages = {"docs page (small model)": work / "docs.html"}
    write_explorer(ExplorerData.load(ROOT / "docs" / "data" / "explorer.npz"), pages["docs page (small model)"])
    if not args.quick:
        for sde in ("vp", "ve"):
            path = work / f"toy-{sde}.html"
            subprocess.run([sys.executable, "-m", "scoresde", "explore", "--toy", "8gaussians", "--sde", sde, "--out",
                            str(path), "--json"], check=True, capture_output=True)  # fmt: skip
            pages[f"explore --toy 8gaussians --sde {sde} (defaults)"] = path
    for extra in args.page:
        pages[f"--page {Path(extra).parent.name}/{Path(extra).name}"] = Path(extra).resolve()
    version = subprocess.run([chromium, "--version"], capture_output=True, text=True).stdout.strip()
    results = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=ARGS)
        for i, (name, path) in enumerate(pages.items()):
            results.append({"name": name, **measure(browser, path, out / f"explorer-{i}.png")})
        browser.close()
    report = {"chromium": version, "machine": "2 CPU cores", "pages": results}
    write_report(out, "explorer", report, markdown(report), plot)


if __name__ == "__main__":
    main()
