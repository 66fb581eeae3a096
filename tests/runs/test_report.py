import struct

from lmlab.runs.report import Report, bar_plot, heatmap, line_plot, md_table


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_md_table_formats_numbers_and_missing():
    out = md_table(["a", "b"], [[1, 0.123456789], ["x", None]])
    assert out.splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.1235 |", "| x | - |"]


def test_report_sections_and_relative_images(tmp_path):
    img = line_plot(
        {"train": ([1, 2, 3], [3.0, 2.0, 1.5]), "val": ([1, 3], [3.1, 1.7])},
        tmp_path / "plots" / "loss.png",
        title="loss",
        ylabel="nats",
    )
    rep = Report("Run").section("Loss", "falls").table(["k"], [[1]]).image(img, tmp_path)
    path = rep.write(tmp_path / "report.md")
    text = path.read_text()
    assert text.startswith("# Run\n") and "## Loss" in text and "![loss](plots/loss.png)" in text
    w, h = png_size(img)
    assert w > 300 and h > 200


def test_bar_and_heatmap_write_pngs(tmp_path):
    b = bar_plot(
        ["short", "long"],
        {"A": [0.9, 0.5], "B": [0.8, 0.7]},
        tmp_path / "b.png",
        errors={"A": [0.05, 0.1]},
    )
    h = heatmap([[0, 1], [2, 3], [4, 5]], tmp_path / "h.png", extent=(0, 2, 0, 3), vmin=0, vmax=5)
    assert png_size(b)[0] > 0 and png_size(h)[1] > 0


def test_heatmap_grid_and_category_lines(tmp_path):
    from lmlab.runs.report import heatmap_grid

    g = heatmap_grid(
        {"a": [[0, 1], [1, 0]], "b": [[1, 1], [0, 0]], "c": [[0.5, 0.5], [0, 1]]},
        tmp_path / "g.png",
        extent=(0, 2, 0, 1),
        vmin=0,
        vmax=1,
    )
    single = heatmap_grid({"a": [[0, 1], [1, 0]]}, tmp_path / "s.png")
    assert png_size(g)[0] > 2 * png_size(single)[0]  # three panels side by side
    c = line_plot(
        {"x": ([0, 2], [0.5, 0.9])},
        tmp_path / "c.png",
        xticklabels=["≤16", "17-64", ">64"],
        bands={"x": ([0.4, 0.8], [0.6, 1.0])},
        ylim=(0, 1),
    )
    assert png_size(c)[0] > 0
