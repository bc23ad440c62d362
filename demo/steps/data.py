"""Demo step: every CI dataset of the registry and two C. elegans connectomes, loaded and drawn."""

from __future__ import annotations

import html
import os
from pathlib import Path

import matplotlib.pyplot as plt

TITLE = "Data: the registry's real datasets and C. elegans connectomes"

# (dataset id, loader options, figure function name, figure options)
DATASETS = [
    ("stevenson2011-m1", {}, "activity_heatmap", {"t_range": (0.0, 60.0)}),
    ("pynapple-phy-a8604", {}, "raster", {"t_range": (0.0, 120.0)}),
    ("suite2p-plane0-demo", {"sampling_rate": 30.0}, "activity_heatmap", {}),
    ("kriegeskorte2008-92images", {}, "stimulus_images", {}),
]
CONNECTOMES = ["white1986", "witvliet2020"]


def _row(name: str, summary: dict) -> str:
    dims = ", ".join(f"{k}={v}" for k, v in summary["dims"].items())
    duration = "" if summary["duration_s"] is None else f"{summary['duration_s']:.1f}"
    cells = [name, dims, str(summary["neurons"]), duration, summary["signal"],
             str(summary.get("license", ""))]
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def run(out: Path) -> list[dict]:
    """Load the CI datasets through the registry and the connectomes, draw one figure each."""
    import neurodata
    import neurodata.plot as ndplot
    from neurodata.cli import summarize

    folder = out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("NEURODATA_MIRROR"):
        shared = Path(__file__).resolve().parents[3] / "shared" / "data"
        if shared.is_dir():  # the project's local copy of the public files: no download
            os.environ["NEURODATA_MIRROR"] = str(shared)
    rows, figures, notes = [], [], []
    for dataset_id, options, plot_name, plot_options in DATASETS:
        try:
            ds = neurodata.datasets.load(dataset_id, progress=False, **options)
            neurodata.datasets.verify(dataset_id, ds)
        except (neurodata.NeurodataError, ImportError) as exc:
            notes.append(f"<li>{html.escape(dataset_id)} skipped: {html.escape(str(exc))}</li>")
            continue
        rows.append(_row(dataset_id, summarize(ds)))
        fig = getattr(ndplot, plot_name)(ds, **plot_options)
        figures.append(folder / f"{dataset_id}.png")
        fig.savefig(figures[-1], dpi=80)
        plt.close(fig)
    for name in CONNECTOMES:
        try:
            con = neurodata.loaders.connectome(name)
        except (neurodata.NeurodataError, ImportError) as exc:
            notes.append(f"<li>connectome {name} skipped: {html.escape(str(exc))}</li>")
            continue
        rows.append(_row(f"connectome {name}", summarize(con)))
        fig = ndplot.connectome_matrix(con, "chemical")
        figures.append(folder / f"connectome_{name}.png")
        fig.savefig(figures[-1], dpi=80)
        plt.close(fig)
    header = "".join(f"<th>{h}</th>" for h in ("dataset", "dims", "neurons", "duration (s)",
                                                 "signal", "licence"))
    text = (
        "<p>Each CI entry of <code>datasets.yaml</code> resolved through "
        "<code>neurodata.datasets.load</code> (from the local mirror, checksums verified) and "
        "checked against the entry's <code>expected</code> block; the Suite2p plane has no "
        "ops.npy, so its frame rate (30 Hz) is given by the caller. The connectomes come from "
        "the packaged <code>cect</code> annotations on the 302 canonical neurons.</p>"
        f"<table><tr>{header}</tr>{''.join(rows)}</table>"
    )
    if notes:
        text += f"<p>Not loaded:</p><ul>{''.join(notes)}</ul>"
    return [{"title": "Datasets loaded", "text": text, "figures": [str(f) for f in figures]}]
