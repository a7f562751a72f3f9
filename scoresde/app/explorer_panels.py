"""The explorer's panels beside the time figure (`scoresde.app.explorer`): the samplers' figure (a menu over the
comparison's runs, their samples beside held-out data) and their table, and the likelihood figure (the model's
density beside the true one)."""

from __future__ import annotations

import html

import numpy as np

from .explorer_data import ExplorerData

__all__ = ["samplers_figure", "likelihood_figure", "sampler_table", "heatmap_geometry", "rounded", "PLANE", "STYLE"]

PLANE = {"showgrid": False, "zeroline": False}
SAMPLE_COLOUR, LEARNED_COLOUR, EXACT_COLOUR, DATA_COLOUR = "#1f77b4", "#ff7f0e", "#444444", "#9a9a9a"


def heatmap_geometry(half: float, cells: int) -> dict:
    """``x0, dx, y0, dy`` placing ``cells x cells`` midpoints on ``[-half, half]^2``."""
    d = 2.0 * half / cells
    return {"x0": -half + d / 2, "dx": d, "y0": -half + d / 2, "dy": d}


def rounded(values: np.ndarray, digits: int = 4) -> list:
    """A short JSON list (menus carry plain lists, not typed arrays)."""
    return [None if not np.isfinite(v) else round(float(v), digits) for v in values]


def samplers_figure(data: ExplorerData):
    """The samplers' figure: a menu over the runs, the chosen run's samples beside held-out data."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panel = data.samplers
    fig = make_subplots(rows=1, cols=2, subplot_titles=("samples of the chosen sampler", "held-out data"))
    best = int(np.nanargmin(panel.energy_distance))

    def summary(i: int) -> str:
        text = (
            f"{panel.labels[i]}: NFE {panel.nfe[i]}, energy distance {panel.energy_distance[i]:.2e} "
            f"= {panel.energy_distance[i] / panel.floor:.1f} × the noise floor"
        )
        if panel.true_nll is not None:
            text += (
                f"; true NLL of the samples {panel.true_nll[i]:.3f} ± {panel.true_nll_standard_error[i]:.3f} "
                f"nats (entropy {panel.entropy:.3f})"
            )
        return text

    marker = {"size": 3, "opacity": 0.6}
    fig.add_trace(go.Scatter(x=panel.x[best, :, 0], y=panel.x[best, :, 1], mode="markers",
                             marker={**marker, "color": SAMPLE_COLOUR}, name="samples"), 1, 1)  # fmt: skip
    fig.add_trace(go.Scatter(x=panel.held_out[:, 0], y=panel.held_out[:, 1], mode="markers",
                             marker={**marker, "color": DATA_COLOUR}, name="held-out data"), 1, 2)  # fmt: skip
    buttons = [
        {
            "label": f"{label} (NFE {nfe})",
            "method": "update",
            "args": [
                {"x": [rounded(panel.x[i, :, 0])], "y": [rounded(panel.x[i, :, 1])]},
                {"title.text": summary(i)},
                [0],
            ],
        }
        for i, (label, nfe) in enumerate(zip(panel.labels, panel.nfe))
    ]
    square = {"range": [-data.extent, data.extent], **PLANE}
    fig.update_xaxes(square)
    fig.update_yaxes(square)
    fig.update_yaxes(scaleanchor="x", row=1, col=1)
    fig.update_yaxes(scaleanchor="x2", row=1, col=2)
    fig.update_layout(
        title={"text": summary(best), "font": {"size": 13}, "x": 0.01, "y": 0.9},
        height=600,
        width=1100,
        showlegend=False,
        plot_bgcolor="white",
        margin={"t": 140},
        updatemenus=[{"type": "dropdown", "active": best, "x": 0.0, "y": 1.32, "xanchor": "left", "buttons": buttons}],
    )
    return fig


def likelihood_figure(data: ExplorerData):
    """The likelihood figure: the model's density, the true one, and the log-ratio."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    grid = data.likelihood
    model = grid.model_log_prob.numpy()
    true = grid.true_log_prob.numpy() if grid.true_log_prob is not None else None
    titles = [f"model density exp(−NLL) (PF-ODE, {grid.nfe} NFE)"]
    panels = [(np.exp(model), "Viridis", None)]
    if true is not None:
        titles += ["true density", "log p_θ − log p (clipped to ±3)"]
        panels += [(np.exp(true), "Viridis", None), (np.clip(model - true, -3, 3), "RdBu_r", (-3.0, 3.0))]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=titles, horizontal_spacing=0.08)
    vmax = float(np.exp(true if true is not None else model).max())
    geometry = heatmap_geometry(grid.extent, grid.grid)
    for col, (values, scale, limits) in enumerate(panels, start=1):
        low, high = limits or (0.0, vmax)
        bar = {"x": fig.get_subplot(1, col).xaxis.domain[1] + 0.005, "len": 0.8, "thickness": 10}
        fig.add_trace(go.Heatmap(z=values.astype(np.float32), colorscale=scale, zmin=low, zmax=high, colorbar=bar,
                                 **geometry), 1, col)  # fmt: skip
        fig.update_yaxes(scaleanchor=f"x{col if col > 1 else ''}", row=1, col=col)
    fig.update_xaxes(PLANE)
    fig.update_yaxes(PLANE)
    fig.update_layout(height=430, width=420 * len(panels), margin={"t": 60})
    return fig


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1400px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; } .meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { padding: 2px 8px; border-bottom: 1px solid #ddd; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
"""


def sampler_table(data: ExplorerData) -> str:
    panel = data.samplers
    head = "<tr><th>sampler</th><th>NFE</th><th>energy distance</th><th>/ floor</th>"
    head += "<th>true NLL of samples (nats)</th></tr>" if panel.true_nll is not None else "</tr>"
    rows = []
    for i, label in enumerate(panel.labels):
        cells = (
            f"<td>{html.escape(label)}</td><td class=num>{panel.nfe[i]}</td>"
            f"<td class=num>{panel.energy_distance[i]:.2e}</td>"
            f"<td class=num>{panel.energy_distance[i] / panel.floor:.1f}</td>"
        )
        if panel.true_nll is not None:
            cells += f"<td class=num>{panel.true_nll[i]:.3f} ± {panel.true_nll_standard_error[i]:.3f}</td>"
        rows.append(f"<tr>{cells}</tr>")
    note = f"Noise floor (two held-out sets): energy distance {panel.floor:.2e}."
    if panel.entropy is not None:
        note += f" A perfect sampler's mean true NLL (the data's entropy): {panel.entropy:.3f} nats."
    return f"<table>{head}{''.join(rows)}</table><p class=meta>{html.escape(note)}</p>"
