"""The 3-D view: coordinates, the self-contained page, and the page drawn by headless Chromium."""

import json
import shutil
import subprocess

import numpy as np
import pytest

from lmlab.studies.preference.embed import compute_embeddings
from lmlab.studies.preference.pairs import write_jsonl
from lmlab.studies.preference.prefixes import make_prefixes
from lmlab.studies.preference.viz import project_3d, write_viz

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_pca_coordinates_are_deterministic_and_keep_the_main_direction():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 10)) * 0.01
    x[:, 2] += np.linspace(-1, 1, 50)  # one direction carries almost all the variance
    a, method = project_3d(x, "pca")
    b, _ = project_3d(x[:, :].copy(), "pca")
    assert method == "pca" and a.shape == (50, 3) and np.array_equal(a, b)
    assert abs(np.corrcoef(a[:, 0], x[:, 2])[0, 1]) > 0.99


@pytest.fixture
def viz_dir(tmp_path):
    pytest.importorskip("plotly")
    rows = []
    for i in range(30):
        topic = ("bread", "bees", "knots")[i % 3]
        rows.append({"prefix": {"messages": [{"role": "user", "content": f"{topic} question {i} </script>"}]},
                     "chosen": "a", "rejected": "b", "src": f"src-{i % 2}"})  # fmt: skip
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    make_prefixes(tmp_path / "pairs.jsonl", tmp_path)

    def embed(texts):
        out = np.random.default_rng(0).standard_normal((len(texts), 12)).astype(np.float32) * 0.1
        for i, t in enumerate(texts):
            out[i, ("bread", "bees", "knots").index(t.split()[0])] += 1
        return out

    compute_embeddings(
        tmp_path / "prefixes_all.jsonl", tmp_path / "emb", "test", k=4, embed_fn=embed
    )
    write_viz(tmp_path / "emb", tmp_path / "prefixes_all.jsonl", tmp_path / "viz")
    return tmp_path / "viz"


def test_page_is_self_contained_and_json_has_every_prompt(viz_dir):
    data = json.loads((viz_dir / "embeddings_3d.json").read_text())
    assert len(data["points"]) == 30 and {p["src"] for p in data["points"]} == {"src-0", "src-1"}
    assert all(p["weight"] > 0 for p in data["points"])
    page = (viz_dir / "embeddings_3d.html").read_text()
    assert "http://" not in page.split("<script>")[0] and '<script src="http' not in page
    assert "Plotly.newPlot" in page and len(page) > 1_000_000  # plotly.js is inlined
    script = page.split("const spec")[1].split("</script></body>")[0]
    assert "</script>" not in script  # a prompt cannot close the page's script early


def _chromium(*args, timeout=90):
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-dev-shm-usage",
         "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--window-size=800,600",
         "--virtual-time-budget=8000", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_headless_chromium_draws_the_points(viz_dir, tmp_path):
    import matplotlib.image

    url = (viz_dir / "embeddings_3d.html").as_uri()
    dom = _chromium("--dump-dom", url).stdout
    assert 'data-points="30"' in dom  # plotly finished drawing all 30 points
    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", url)
    img = matplotlib.image.imread(shot)[..., :3]
    assert img.shape[:2] == (600, 800)
    non_white = (img < 0.95).any(axis=-1).mean()
    coloured = (img.max(axis=-1) - img.min(axis=-1) > 0.25).mean()  # marker colours, not grey axes
    assert non_white > 0.01 and coloured > 0.0005
