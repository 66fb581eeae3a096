"""`viz`: prompt embeddings in 3-D (UMAP when installed, PCA otherwise) as JSON and as one
self-contained HTML page (plotly.js inlined: it opens without a network). Colour is the source,
marker size grows with the density weight, hovering shows the prompt and its weight.

    embeddings_3d.json   {"method", "points": [{id, x, y, z, src, weight, density, text}]}
    embeddings_3d.html   the interactive page; when plotly has drawn it, the page sets
                         `data-points` on <body> to the number of points (the browser test reads it)
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from lmlab.errors import LmlabError
from lmlab.paths import atomic_write_text
from lmlab.studies.preference.pairs import first_user_message
from lmlab.studies.preference.prefixes import read_prefixes


def project_3d(emb: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """[N, 3] coordinates and the method used (umap | pca)."""
    if len(emb) < 4:
        raise LmlabError(f"3-D coordinates need at least 4 prompts, got {len(emb)}")
    if method in ("auto", "umap"):
        try:
            import umap

            reducer = umap.UMAP(
                n_components=3, random_state=seed, n_neighbors=min(15, len(emb) - 1)
            )
            return reducer.fit_transform(emb).astype(np.float32), "umap"
        except ImportError:
            if method == "umap":
                raise LmlabError("--method umap needs the umap-learn package") from None
    if method not in ("auto", "umap", "pca"):
        raise LmlabError(f"--method: unknown {method!r} (expected auto, umap or pca)")
    x = emb - emb.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    coords = x @ vt[:3].T
    # SVD signs are arbitrary: fix them so the same data always gives the same picture
    coords *= np.where(coords[np.abs(coords).argmax(axis=0), range(3)] < 0, -1, 1)
    return coords.astype(np.float32), "pca"


def points(emb_dir: Path, prefixes_path: Path, method: str = "auto", seed: int = 0) -> dict:
    from lmlab.studies.preference.embed import load_weights

    weights = load_weights(emb_dir, prefixes_path)
    prefixes = read_prefixes(prefixes_path)
    emb = np.load(emb_dir / "embeddings.npy")
    coords, used = project_3d(emb, method, seed)
    pts = []
    for p, c in zip(prefixes, coords, strict=True):
        w = weights[p["id"]]
        pts.append(
            {
                "id": p["id"],
                "x": round(float(c[0]), 5),
                "y": round(float(c[1]), 5),
                "z": round(float(c[2]), 5),
                "src": p.get("src", "unknown"),
                "weight": w["weight"],
                "density": w["density"],
                "text": first_user_message(p["prefix"]["messages"])[:300],
            }
        )
    return {"method": used, "points": pts}


def html_page(data: dict, title: str = "Prompt embeddings") -> str:
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise LmlabError("viz needs plotly for its page (pip install 'lmlab[embed]')") from None
    pts = data["points"]
    w = np.array([p["weight"] for p in pts], dtype=np.float64)
    # marker size 4..16 by log weight: rare prompts stand out, and a few extreme weights
    # (heavy tails in real data) do not shrink everything else to one size
    logw = np.log(np.maximum(w, 1e-30))
    span = logw.max() - logw.min()
    rank = (logw - logw.min()) / span if span > 0 else np.full(len(w), 0.5)
    traces = []
    for src in sorted({p["src"] for p in pts}):
        sel = [i for i, p in enumerate(pts) if p["src"] == src]
        traces.append(
            {
                "type": "scatter3d",
                "mode": "markers",
                "name": src,
                "x": [pts[i]["x"] for i in sel],
                "y": [pts[i]["y"] for i in sel],
                "z": [pts[i]["z"] for i in sel],
                "text": [
                    f"{html.escape(pts[i]['text'][:120])}<br>weight {pts[i]['weight']:.3g}"
                    for i in sel
                ],
                "hoverinfo": "text",
                "marker": {"size": [round(4 + 12 * rank[i], 2) for i in sel], "opacity": 0.8},
            }
        )
    layout = {
        "title": {"text": f"{title} ({data['method']}, {len(pts)} prompts)"},
        "margin": {"l": 0, "r": 0, "t": 40, "b": 0},
        "legend": {"title": {"text": "source"}},
    }
    spec = json.dumps({"data": traces, "layout": layout}).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>html,body{{margin:0;height:100%;background:#fff}}#plot{{width:100%;height:100%}}</style>
<script>{get_plotlyjs()}</script></head>
<body><div id="plot"></div>
<script>
const spec = {spec};
Plotly.newPlot("plot", spec.data, spec.layout, {{responsive: true}}).then(function () {{
  let n = 0; spec.data.forEach(function (t) {{ n += t.x.length; }});
  document.body.setAttribute("data-points", String(n));
}});
</script></body></html>
"""


def write_viz(emb_dir: Path, prefixes_path: Path, out: Path, method: str = "auto") -> dict:
    data = points(emb_dir, prefixes_path, method)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "embeddings_3d.json", json.dumps(data))
    atomic_write_text(out / "embeddings_3d.html", html_page(data))
    return {"method": data["method"], "points": len(data["points"]), "out": str(out)}
