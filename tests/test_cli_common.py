"""--list-profiles shows whole descriptions; --print-config says what the run will replace."""

import yaml

from lmlab import config as C


def test_list_profiles_keeps_whole_multiline_descriptions(lmlab_cli, tmp_path):
    out = lmlab_cli("train", "--list-profiles", env={"COLUMNS": "80"}, check=0).stdout
    flat = " ".join(out.split())
    # kv-demo's description is a three-line comment; the table wraps it, never cuts it
    assert "a short causal convolution before each attention (model.short_conv)" in flat
    assert flat.count("associative-recall plateau (README, recipe trials).") == 1
    prof = tmp_path / "p.yaml"
    prof.write_text("\n# First line,\n#   second line.\n\n# not part of it\nsteps: 1\n")
    assert C.profile_description(prof) == "First line, second line."


def test_print_config_says_the_vocab_comes_from_the_tokenizer(lmlab_cli):
    out = lmlab_cli("train", "--profile", "smoke", "--print-config", check=0).stdout
    (line,) = [x for x in out.splitlines() if "vocab_size" in x]
    assert "replaced by the tokenizer's vocabulary size" in line
    assert yaml.safe_load(out)["model"]["vocab_size"] == 50304  # still valid YAML
