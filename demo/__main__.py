"""Run the demo steps and write ``out/report.html``.

``python -m demo --out out [--only gpfa rsa]``. A step that fails is reported in the page
with its error and the demo exits non-zero after the other steps have run.
"""

from __future__ import annotations

import argparse
import html
import importlib
import sys
import time
import traceback
from pathlib import Path

STEPS = ["data", "gpfa", "gpvae", "hmmglm", "ntf", "bicluster", "rsa"]


def _section_html(section: dict, out: Path) -> str:
    parts = [f"<h3>{html.escape(section['title'])}</h3>"]
    if section.get("text"):
        parts.append(f"<div>{section['text']}</div>")
    for fig in section.get("figures", []):
        rel = Path(fig).relative_to(out)
        parts.append(f'<figure><img src="{html.escape(str(rel))}" style="max-width:900px">'
                     f"<figcaption>{html.escape(rel.name)}</figcaption></figure>")
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    """Run the steps named on the command line (all by default); return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m demo")
    parser.add_argument("--out", default="out", type=Path)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    body, failed = [], []
    for name in args.only or STEPS:
        module = importlib.import_module(f"demo.steps.{name}")
        print(f"== {module.TITLE}", flush=True)
        start = time.perf_counter()
        try:
            sections = module.run(out)
            status = f"done in {time.perf_counter() - start:.1f} s"
            body.append(f"<h2>{html.escape(module.TITLE)}</h2><p><i>{status}</i></p>")
            body += [_section_html(s, out) for s in sections]
        except Exception:  # one failing step must not hide the others
            failed.append(name)
            body.append(f"<h2>{html.escape(module.TITLE)}: failed</h2>"
                        f"<pre>{html.escape(traceback.format_exc())}</pre>")
            traceback.print_exc()
        print(f"   {time.perf_counter() - start:.1f} s", flush=True)
    report = out / "report.html"
    report.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>neurodata demo</title>"
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style>"
        "</head><body><h1>neurodata demo report</h1>" + "\n".join(body) + "</body></html>"
    )
    print(f"report: {report}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
