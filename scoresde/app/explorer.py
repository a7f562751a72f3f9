r"""The interactive explorer: one self-contained HTML page (plotly.js and every number inside it; no server, no
network at view time) drawn from an `scoresde.app.explorer_data.ExplorerData`.

Plotly draws it: its figures are JSON that plotly.js renders, with sliders, animation frames and drop-down menus
declared in that JSON, so the page needs no hand-written JavaScript, and ``include_plotlyjs`` inlines the library
for offline use. Three figures:

1. **time** (one slider over $t$ moves every panel): samples of $p_t$ over its density; $\alpha(t)$, $\sigma(t)$
   and the log-SNR; the learned score against the exact one ($\sigma(t)\,s$, i.e. $-\hat\epsilon$); their
   difference $\sigma|s_\theta - \nabla\log p_t|$; the same prior draws on the reverse SDE's and the
   probability-flow ODE's paths, with a menu to follow one draw.
2. **samplers**: a menu over the comparison's runs (sampler and NFE), their samples beside held-out data, with the
   energy distance over the noise floor and the samples' true NLL beside the entropy (and the whole table below).
3. **likelihood**: the model's density (probability-flow ODE) beside the true one, and the log-ratio.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from .._io import write_atomic
from .explorer_data import ExplorerData
from .explorer_panels import (
    EXACT_COLOUR,
    LEARNED_COLOUR,
    PLANE,
    SAMPLE_COLOUR,
    STYLE,
    heatmap_geometry,
    likelihood_figure,
    rounded,
    sampler_table,
    samplers_figure,
)

__all__ = ["explorer_html", "write_explorer", "FIGURE_IDS"]

FIGURE_IDS = ("explorer-time", "explorer-samplers", "explorer-likelihood")
"""The ``id`` of each figure's ``div`` (what a test or a page's own script finds)."""


ARROW_PIXELS = (4.0, 22.0)
"""Smallest and largest size (pixels) of an arrow of the score field."""


def _arrow_markers(vector: np.ndarray, longest: float) -> dict:
    """The score field ``vector`` ``[N, 2]`` as arrow markers: each turned along its vector (plotly's angle:
    degrees clockwise from up) and sized by its length, ``longest`` taking the largest size. One marker per arrow:
    drawing a slider step costs per point drawn, and a shaft-and-barbs polyline takes seven (measured in headless
    Chromium: 600 ms a step for two fields of 289 polylines, under 200 ms as markers)."""
    length = np.linalg.norm(vector, axis=1)
    angle = np.degrees(np.arctan2(vector[:, 0], vector[:, 1]))
    low, high = ARROW_PIXELS
    size = low + (high - low) * np.clip(length / max(longest, 1e-12), 0.0, 1.0)
    return {"angle": angle.astype(np.float32), "size": size.astype(np.float32)}


def _paths(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All draws' polylines through their positions ``[F, k, 2]``, separated by gaps (NaN)."""
    f, k, _ = positions.shape
    padded = np.concatenate([positions, np.full((1, k, 2), np.nan, dtype=positions.dtype)], axis=0)
    flat = padded.transpose(1, 0, 2).reshape(-1, 2)
    return flat[:, 0], flat[:, 1]


def _no_error(has_learned: bool) -> str:
    """The error panel's title when there is no error to draw."""
    return "score error: none (the exact score alone)" if not has_learned else "score error: no exact score here"


def _time_figure(data: ExplorerData):
    """The slider figure: forward process, schedule, score, score error, SDE and ODE paths."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    has_learned, has_exact, has_error = data.learned is not None, data.exact is not None, data.error is not None
    score_title = "learned (orange) vs exact (outline) score, σ(t)·s" if has_learned and has_exact else "score σ(t)·s"
    titles = (
        f"samples of p_t over its density ({data.density_kind})",
        "α(t), σ(t) and log-SNR λ(t)",
        score_title,
        "score error σ(t)·|s_θ − ∇log p_t|" if has_error else _no_error(has_learned),
        "reverse SDE from the prior draws",
        "probability-flow ODE from the same draws",
    )
    fig = make_subplots(
        rows=2,
        cols=3,
        subplot_titles=titles,
        specs=[[{}, {"secondary_y": True}, {}], [{}, {}, {}]],
        horizontal_spacing=0.09,
        vertical_spacing=0.1,
    )
    frames_count, k = len(data.times), data.sde_paths.shape[1]
    vectors = [v for v in (data.learned, data.exact) if v is not None]
    # one arrow scale for every frame (the fields are sigma * score: bounded in t)
    longest = max(float(np.nanmax(np.linalg.norm(v, axis=-1))) for v in vectors)
    error_max = float(np.nanquantile(data.error, 0.99)) if has_error else 1.0
    draw_colours = [f"hsl({int(360 * i / k)},70%,45%)" for i in range(k)]

    def caption(j: int) -> str:
        text = (
            f"t = {data.times[j]:.3g}:  α = {data.alpha[j]:.3f},  σ = {data.sigma[j]:.3f},  "
            f"log-SNR = {data.log_snr[j]:.2f}"
        )
        if data.error_rms is not None:
            text += f";  RMS of σ|s_θ − ∇log p_t| over p_t = {data.error_rms[j]:.3f}"
        return text

    def points(xy: np.ndarray) -> dict:
        return {"x": xy[:, 0], "y": xy[:, 1]}

    # the traces that move with the slider: (the trace at slider position j, its style, row, col, secondary y)
    moving = [
        (lambda j: go.Heatmap(z=data.density[j], **heatmap_geometry(float(data.half[j]), data.density.shape[-1])),
         {"colorscale": "Blues", "showscale": False, "hoverinfo": "skip", "name": "p_t"}, 1, 1, False),
        (lambda j: go.Scatter(**points(data.samples[j])),
         {"mode": "markers", "marker": {"size": 3, "color": SAMPLE_COLOUR, "opacity": 0.6}, "name": "x_t"}, 1, 1,
         False),
        (lambda j: go.Scatter(x=[float(data.times[j])] * 2, y=[float(data.alpha[j]), float(data.sigma[j])]),
         {"mode": "markers", "marker": {"size": 9, "color": ["#2ca02c", "#d62728"]}, "name": "α, σ at t"}, 1, 2,
         False),
        (lambda j: go.Scatter(x=[float(data.times[j])], y=[float(data.log_snr[j])]),
         {"mode": "markers", "marker": {"size": 9, "color": "#9467bd"}, "name": "λ at t"}, 1, 2, True),
    ]  # fmt: skip
    # the exact field in outline over the learned one filled: where they agree the outline frames the fill
    outline = {"symbol": "arrow-open", "color": EXACT_COLOUR, "line": {"width": 1.3, "color": EXACT_COLOUR}}
    filled = {"symbol": "arrow", "color": LEARNED_COLOUR, "opacity": 0.75, "line": {"width": 0}}
    for field, arrow, name in ((data.learned, filled, "learned"), (data.exact, outline, "exact")):
        if field is not None:
            moving.append((lambda j, field=field: go.Scatter(marker=_arrow_markers(field[j], longest)),
                           {**points(data.arrows), "mode": "markers", "marker": arrow, "name": f"{name} score",
                            "hoverinfo": "skip"}, 1, 3, False))  # fmt: skip
    if has_error:
        colourbar = {"len": 0.42, "y": 0.21, "x": fig.get_subplot(2, 1).xaxis.domain[1] + 0.005, "thickness": 8}
        moving.append((lambda j: go.Heatmap(z=data.error[j], **heatmap_geometry(data.extent, data.error.shape[-1])),
                       {"colorscale": "Reds", "zmin": 0, "zmax": error_max, "colorbar": colourbar, "name": "σ|Δs|"},
                       2, 1, False))  # fmt: skip
    for col, positions in ((2, data.sde_paths), (3, data.ode_paths)):
        moving.append((lambda j, positions=positions: go.Scatter(**points(positions[j])),
                       {"mode": "markers", "marker": {"size": 7, "color": draw_colours, "line": {"width": 0.5}},
                        "name": "x_t on the paths"}, 2, col, False))  # fmt: skip
    last = frames_count - 1
    moving_index = []
    for build, style, row, col, secondary in moving:
        trace = build(last).update(**style, showlegend=False)
        fig.add_trace(trace, row=row, col=col, secondary_y=secondary if (row, col) == (1, 2) else None)
        moving_index.append(len(fig.data) - 1)

    followed = _static_traces(fig, data)

    follow = _follows_p_t(data.half)
    frames = []
    for j in range(frames_count):
        layout = {"title": {"text": caption(j)}}
        if follow:
            layout.update({axis: {"range": [-float(data.half[j]), float(data.half[j])]} for axis in _PLANE_AXES})
        frames.append(
            go.Frame(name=f"{j}", data=[build(j) for build, *_ in moving], traces=moving_index, layout=layout)
        )
    fig.frames = frames
    slider, menus = _time_controls(data, followed, draw_colours)
    _lay_out(fig, data, caption(last), float(data.half[last] if follow else data.half.max()), slider, menus)
    return fig


def _static_traces(fig, data: ExplorerData) -> list[int]:
    """The traces that stay: the schedule's curves, the SDE's and ODE's paths, and the (empty) followed draw's line in
    each path panel, whose indices it returns (the follow menu fills them)."""
    import plotly.graph_objects as go

    for y, colour, name, secondary in (
        (data.curve_alpha, "#2ca02c", "α(t)", False),
        (data.curve_sigma, "#d62728", "σ(t)", False),
        (data.curve_log_snr, "#9467bd", "log-SNR λ(t)", True),
    ):
        fig.add_trace(go.Scatter(x=data.curve_t, y=y, mode="lines", line={"color": colour}, name=name), 1, 2,
                      secondary_y=secondary)  # fmt: skip
    followed = []
    for col, positions in ((2, data.sde_paths), (3, data.ode_paths)):
        x, y = _paths(positions)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line={"color": "rgba(120,120,120,0.35)", "width": 0.8},
                                 hoverinfo="skip", showlegend=False), 2, col)  # fmt: skip
        fig.add_trace(go.Scatter(x=[], y=[], mode="lines", line={"color": "black", "width": 2.5}, showlegend=False,
                                 hoverinfo="skip", name="followed draw"), 2, col)  # fmt: skip
        followed.append(len(fig.data) - 1)
    return followed


def _lay_out(fig, data: ExplorerData, title: str, plane_half: float, slider: dict, menus: list) -> None:
    """The figure's layout: size, title, slider and menus, the plane panels' range (``plane_half``) and square
    aspect, the schedule's t axis."""
    plane = {"range": [-plane_half, plane_half]}
    square = {"range": [-data.extent, data.extent]}
    fig.update_layout(
        title={"text": title, "font": {"size": 13}, "x": 0.3, "y": 0.985},
        height=920,
        width=1350,
        margin={"t": 110, "b": 90, "l": 50, "r": 30},
        sliders=[slider],
        updatemenus=menus,
        showlegend=False,
        plot_bgcolor="white",
        **{axis: plane for axis in _PLANE_AXES},
    )
    for axis in _SQUARE_AXES:
        fig.layout[axis].update(square)
    for row, col in ((1, 1), (1, 3), (2, 1), (2, 2), (2, 3)):
        x_name = fig.get_subplot(row, col).xaxis.plotly_name  # "xaxis5" is anchored as "x5"
        fig.update_xaxes(PLANE, row=row, col=col)
        fig.update_yaxes(PLANE, row=row, col=col, scaleanchor=x_name.replace("axis", ""))
    fig.update_xaxes(title_text="t", row=1, col=2)


FOLLOW_RATIO = 2.0
r"""The plane panels keep one range (the widest $p_t$'s) unless $p_t$'s width varies by more than this factor over
the slider (VE: from the data's square to $3\sigma_{max}$); then each slider step sets their range, which costs a
third of a step's drawing time (measured in headless Chromium: 160 ms a step without, 290 ms with)."""


def _time_controls(data: ExplorerData, followed: list[int], draw_colours: list[str]) -> tuple[dict, list]:
    """The time figure's slider (one step a frame), its play buttons (T -> 0, 0 -> T) and the menu that follows one
    draw: it restyles the ``followed`` traces (SDE, ODE) with that draw's whole paths, in its colour."""
    k = data.sde_paths.shape[1]
    animate = {"mode": "immediate", "frame": {"duration": 0, "redraw": True}, "transition": {"duration": 0}}
    slider = {
        "active": len(data.times) - 1,
        "currentvalue": {"prefix": "t = "},
        "pad": {"t": 40},
        "steps": [
            {"label": f"{t:.3g}", "method": "animate", "args": [[f"{j}"], animate]} for j, t in enumerate(data.times)
        ],
    }
    play = {"frame": {"duration": 90, "redraw": True}, "transition": {"duration": 0}, "fromcurrent": False}
    order = [f"{j}" for j in range(len(data.times))]
    menus = [
        {
            "type": "buttons",
            "direction": "left",
            "x": 0.0,
            "y": 1.1,
            "xanchor": "left",
            "buttons": [
                {"label": "▶ reverse (T → 0)", "method": "animate", "args": [order[::-1], play]},
                {"label": "▶ forward (0 → T)", "method": "animate", "args": [order, play]},
            ],
        },
        {
            "type": "dropdown",
            "x": 1.0,
            "y": 1.1,
            "xanchor": "right",
            "buttons": [
                {
                    "label": "follow a draw: none",
                    "method": "restyle",
                    "args": [{"x": [[], []], "y": [[], []]}, followed],
                }
            ]  # fmt: skip
            + [
                {
                    "label": f"follow draw {i + 1}",
                    "method": "restyle",
                    "args": [
                        {
                            "x": [rounded(data.sde_paths[:, i, 0]), rounded(data.ode_paths[:, i, 0])],
                            "y": [rounded(data.sde_paths[:, i, 1]), rounded(data.ode_paths[:, i, 1])],
                            "line.color": [draw_colours[i]] * 2,
                        },
                        followed,
                    ],
                }
                for i in range(k)
            ],
        },
    ]
    return slider, menus


def _follows_p_t(half: np.ndarray) -> bool:
    """Whether the plane panels follow the width of $p_t$ (`FOLLOW_RATIO`)."""
    return float(half.max()) > FOLLOW_RATIO * float(half.min())


_PLANE_AXES = ("xaxis", "yaxis", "xaxis5", "yaxis6", "xaxis6", "yaxis7")
"""The axes of the panels that follow p_t's scale (forward samples, SDE paths, ODE paths): the secondary y axis of
the schedule panel takes ``yaxis3``, which shifts the y axes after it by one."""
_SQUARE_AXES = ("xaxis3", "yaxis4", "xaxis4", "yaxis5")
"""The axes of the score and error panels: the data's square."""


def explorer_html(data: ExplorerData) -> str:
    """The explorer page of ``data`` as one self-contained HTML document (plotly.js inlined)."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    config = {"displaylogo": False, "responsive": False}

    def div(fig, name: str) -> str:
        return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=name, auto_play=False, config=config)

    sde_nfe = ", ".join(f"{name}: {nfe} NFE" for name, nfe in data.path_nfe.items())
    body = [
        f"<h1>{html.escape(data.title)}</h1>",
        f"<p class=meta>SDE: {html.escape(data.sde)} · model: {html.escape(data.model)} · written by scoresde "
        "explore; works offline.</p>",
        "<h2>The forward process, the score and the reverse paths</h2>",
        "<p>Drag the slider over <i>t</i> (or press ▶). Top: samples of the marginal p<sub>t</sub> over its density, "
        "the noise schedule, and the score field drawn as σ(t)·s (the negative noise prediction, −ε̂, whose size "
        "stays bounded as t → 0). Bottom: where the learned score is wrong, and the same prior draws carried to the "
        f"data by the reverse SDE and by the probability-flow ODE ({html.escape(sde_nfe)}); pick a draw in the menu "
        "to follow its whole path under both. The reverse process runs from the right end of the slider (t = T) to "
        "the left.</p>",
        div(_time_figure(data), FIGURE_IDS[0]),
    ]
    if data.samplers is not None:
        body += [
            "<h2>Samplers</h2>",
            "<p>Pick a sampler and step count in the menu: its samples (from the same prior draw as every other) "
            "beside held-out data. The energy distance is given as a multiple of the noise floor, the distance "
            "between two held-out sets of the same size; where the data has a density, the samples' mean true "
            "negative log-density sits beside the data's entropy, which a perfect sampler scores.</p>",
            div(samplers_figure(data), FIGURE_IDS[1]),
            sampler_table(data),
        ]
    body += [f"<p class=meta>{html.escape(note)}</p>" for note in data.notes]
    if data.likelihood is not None:
        body += [
            "<h2>Likelihood</h2>",
            "<p>The model's density exp(−NLL), the NLL exact through the probability-flow ODE, on a grid; beside it "
            "the true density and the log-ratio (red: the model puts too much mass there, blue: too little).</p>",
            div(likelihood_figure(data), FIGURE_IDS[2]),
        ]
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>scoresde explorer: {html.escape(data.title)}</title><style>{STYLE}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head>\n<body>\n'
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_explorer(data: ExplorerData, path: str | Path) -> Path:
    """Write the explorer page of ``data`` to ``path`` (one HTML file, atomically). Returns the path."""
    return write_atomic(path, explorer_html(data).encode())
