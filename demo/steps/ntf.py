"""Demo step: dynamic functional connectome on simulated worms and on the real Suite2p plane."""

from __future__ import annotations

import html
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

TITLE = "Dynamic functional connectome: affinity tensor, masked NTF, weighted-SBM communities"


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def run(out: Path) -> list[dict]:
    """Fit the pipeline on simulated worms and on the real Suite2p recording.

    The simulated stack has 4 worms with planted epoch-specific communities; the Suite2p
    plane is a single animal whose frame rate (not in the files) is taken as 30 Hz.
    """
    import neurodata
    import neurodata.plot as ndplot
    from neurodata.models.community import nmi
    from neurodata.models.ntf import DynamicConnectome, simulate

    folder = out / "ntf"
    folder.mkdir(parents=True, exist_ok=True)
    sections = []

    ds = simulate(n_neurons=30, n_animals=4, epoch_duration=60.0, sampling_rate=5.0, seed=0)
    dc = DynamicConnectome(rank=3, window=10.0, step=5.0, n_init=4, seed=0).fit(ds)
    comps = dc.epoch_components()
    rows = []
    for j, epoch in enumerate(ds["epoch"].values):
        r = comps[str(epoch)]
        score = nmi(dc.communities_.values[r], ds["planted_community"].values[j])
        rows.append(f"<tr><td>{html.escape(str(epoch))}</td><td>C{r}</td>"
                    f"<td>{dc.communities_.values[r].max() + 1}</td>"
                    f"<td>{ds['planted_community'].values[j].max() + 1}</td>"
                    f"<td>{score:.2f}</td></tr>")
    missing = int((~ds["recorded"].values).sum())
    text = (f"<p>4 simulated worms, 30 neurons, 3 stimulus epochs with different co-active "
            f"groups; {missing} (animal, neuron) recordings missing and masked. Rank-3 NTF "
            f"(relative error {dc.ntf_error_:.3f}); communities by a degree-corrected weighted "
            "SBM, number of groups by ICL (no ground truth).</p>"
            "<table><tr><th>epoch</th><th>component</th><th>groups found</th>"
            "<th>groups planted</th><th>NMI</th></tr>" + "".join(rows) + "</table>")
    figs = [_save(ndplot.ntf_components(dc), folder / "sim_components.png")]
    sections.append({"title": "Simulated worms: components and communities", "text": text,
                     "figures": figs})

    if not os.environ.get("NEURODATA_MIRROR"):
        shared = Path(__file__).resolve().parents[3] / "shared" / "data"
        if shared.is_dir():
            os.environ["NEURODATA_MIRROR"] = str(shared)
    real = neurodata.datasets.load("suite2p-plane0-demo", sampling_rate=30.0)
    # the 60 ROIs most likely to be cells keep the step under a minute (the tutorial
    # runs all 219)
    real = real.isel(neuron=np.argsort(-real["iscell_prob"].values)[:60])
    dcr = DynamicConnectome(rank=3, window=5.0, step=1.0, n_init=4, seed=0).fit(real)
    sizes = [int(dcr.communities_.values[r].max()) + 1 for r in range(3)]
    text = (f"<p>Suite2p plane ({real.sizes['neuron']} most cell-like ROIs x "
            f"{real.sizes['time']} frames; "
            "the frame rate is not in the files, 30 Hz is assumed). Differential affinities "
            f"in 5 s windows every 1 s ({dcr.time_course_.sizes['window']} windows, "
            f"{dcr.pair_pattern_.sizes['pair']} pairs); rank-3 NTF, relative error "
            f"{dcr.ntf_error_:.3f}; communities per component: {sizes}.</p>")
    figs = [_save(ndplot.ntf_components(dcr), folder / "suite2p_components.png")]
    sections.append({"title": "Real Suite2p recording (single animal)", "text": text,
                     "figures": figs})
    return sections
