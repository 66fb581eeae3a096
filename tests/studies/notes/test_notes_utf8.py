"""Notes inputs that are not UTF-8 are read (bad bytes become U+FFFD) with a warning per file."""

import shutil

from lmlab.studies.notes.paths import SAMPLE_PRIMER, SAMPLE_ROAM_DIR


def test_notes_tokenizer_and_cache_build_warn_per_file(tmp_path, lmlab_cli):
    roam = tmp_path / "roam"
    shutil.copytree(SAMPLE_ROAM_DIR, roam)
    bad_page = roam / "Latin1 Page.md"
    bad_page.write_bytes("- caf\xe9 au lait\n- cr\xe8me\n".encode("latin-1"))  # 2 bad bytes
    primer = tmp_path / "primer.txt"
    primer.write_bytes(SAMPLE_PRIMER.read_bytes() + b"\nuser: na\xefve?\nassistant: yes\n")
    tok = tmp_path / "tok"
    common = ["--roam-dir", roam, "--primer", primer]
    made = lmlab_cli("notes", "tokenizer", *common, "--out", tok, "--vocab-size", "600", check=0)
    assert f"warning: {bad_page}: 2 byte(s) are not UTF-8" in made.stderr
    assert f"warning: {primer}: 1 byte(s) are not UTF-8" in made.stderr
    built = lmlab_cli(
        "cache",
        "build-all",
        *common,
        "--only",
        "roam,primer",
        "--tokenizer",
        tok,
        "--cache-dir",
        tmp_path / "cache",
        check=0,
    )
    assert f"warning: {bad_page}: 2 byte(s) are not UTF-8" in built.stderr
    assert f"warning: {primer}: 1 byte(s) are not UTF-8" in built.stderr
