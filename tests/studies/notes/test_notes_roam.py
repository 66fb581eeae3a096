"""Roam export -> prose: markup cleaning, bullet structure, file discovery and the split."""

import pytest

from lmlab.errors import LmlabError
from lmlab.studies.notes.paths import SAMPLE_ROAM_DIR
from lmlab.studies.notes.roam import clean_inline, clean_page, find_pages, load_pages, split_pages


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("see [[Page Link]] and [[Other]]", "see Page Link and Other"),
        (
            "tagged #[[multi word tag]] and #tag and #kebab-tag",
            "tagged multi word tag and tag and kebab-tag",
        ),
        ("nested [[outer [[inner]] page]]", "nested outer inner page"),
        ("a ref ((a1B2c3D4e)) here", "a ref here"),
        ("{{embed: ((Xy7-kLm9q))}} gone", "gone"),
        ("{{[[TODO]]}} buy milk", "buy milk"),
        ("Type:: [[Recipe]]", "Type:: Recipe"),
        ("**bold** __italic__ ^^highlight^^ ~~strike~~", "bold italic highlight strike"),
        ("[alias]([[Real Page]]) and [site](https://example.org/x)", "alias and site"),
        ("an image ![](https://example.org/a.png) here", "an image here"),
        ("code `[[not a link]] #no` stays", "code `[[not a link]] #no` stays"),
        ("C# and a#b and url.com/#frag stay", "C# and a#b and url.com/#frag stay"),
        ("literal <|eot|> stays text", "literal <|eot|> stays text"),
    ],
)
def test_clean_inline(raw, clean):
    assert clean_inline(raw) == clean


def test_clean_page_keeps_bullets_as_lines_with_their_nesting():
    page = (
        "- Status:: #active\n"
        "- Steps\n"
        "    - first [[thing]]\n"
        "        - detail ((abcdefghi))\n"
        "- {{[[TODO]]}}\n"  # nothing left after cleaning: the line goes
        "```\n"
        "x = [[1]]\n"
        "```\n"
    )
    assert clean_page(page, title="My Page") == (
        "My Page\nStatus:: active\nSteps\n  first thing\n    detail\nx = [[1]]\n"
    )


def test_clean_page_detects_two_space_and_tab_indents():
    assert clean_page("- a\n  - b\n    - c\n") == "a\n  b\n    c\n"
    assert clean_page("- a\n\t- b\n") == "a\n  b\n"


def test_a_page_of_markup_only_is_empty():
    assert clean_page("- {{embed: ((abcdefghi))}}\n- ((abcdefghi))\n", title="T") == ""


def test_the_sample_export_loads_from_nested_folders():
    pages = load_pages(SAMPLE_ROAM_DIR)
    names = {p.path.as_posix() for p in pages}
    assert len(pages) >= 30 and "Sourdough.md" in names and "daily/May 18th, 2024.md" in names
    text = "\n".join(p.text for p in pages)
    for markup in ("[[", "]]", "((", "{{", "**", "^^"):
        assert markup not in text.replace("`", "")


def test_missing_folder_and_folder_without_markdown_are_clear_errors(tmp_path):
    with pytest.raises(LmlabError, match="Roam export folder not found.*--roam-dir"):
        find_pages(tmp_path / "nope")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "notes.txt").write_text("not markdown")
    with pytest.raises(LmlabError, match=r"no markdown \(\*\.md\) files under"):
        find_pages(tmp_path / "export")
    (tmp_path / "export" / "empty.md").write_text("- {{[[TODO]]}}\n")
    with pytest.raises(LmlabError, match="empty after removing Roam markup"):
        load_pages(tmp_path / "export")


def test_split_by_file_is_deterministic_and_stable_when_pages_are_added(tmp_path):
    for i in range(30):
        (tmp_path / f"p{i}.md").write_text(f"- page {i}\n")
    pages = load_pages(tmp_path)
    train, val = split_pages(pages, 0.2, seed=3)
    assert {p.path for p in train} | {p.path for p in val} == {p.path for p in pages}
    assert not {p.path for p in train} & {p.path for p in val}
    assert 1 <= len(val) < len(pages)
    assert split_pages(pages, 0.2, seed=3)[1] == val
    assert [p.path for p in split_pages(pages, 0.2, seed=4)[1]] != [p.path for p in val]
    (tmp_path / "new.md").write_text("- a new page\n")
    _, val2 = split_pages(load_pages(tmp_path), 0.2, seed=3)
    assert {p.path for p in val} <= {p.path for p in val2}


def test_split_needs_two_pages_and_gives_each_side_one(tmp_path):
    (tmp_path / "only.md").write_text("- one page\n")
    with pytest.raises(LmlabError, match="at least 2 non-empty pages"):
        split_pages(load_pages(tmp_path), 0.1, 0)
    (tmp_path / "two.md").write_text("- another\n")
    train, val = split_pages(load_pages(tmp_path), 0.01, 0)
    assert len(train) == len(val) == 1
    train, val = split_pages(load_pages(tmp_path), 0.99, 0)
    assert len(train) == len(val) == 1
