"""Chat with the notes defaults (the core `lmlab chat` with the persona as system prompt)."""

import pytest
from notes_testkit import build_sample
from typer.testing import CliRunner

from lmlab.studies.notes.chat import system_defaults
from lmlab.studies.notes.cli import notes_app
from lmlab.studies.notes.paths import PERSONA_FILE

runner = CliRunner()


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return build_sample(tmp_path_factory.mktemp("notes-chat"))


def test_system_prompt_precedence(tmp_path):
    f = tmp_path / "sys.txt"
    assert system_defaults(None, None) == (None, PERSONA_FILE)
    assert system_defaults("Given.", None) == ("Given.", None)
    assert system_defaults(None, f) == (None, f)
    assert system_defaults("", None) == ("", None)  # an explicit empty prompt means none
    assert PERSONA_FILE.read_text().strip().startswith("You are Wren")


def test_notes_chat_is_the_core_chat_with_the_persona_by_default(tmp_path, monkeypatch):
    import lmlab.model.cli as core

    calls = []
    monkeypatch.setattr(core, "chat_command", lambda **kw: calls.append(kw))
    args = ["chat", "--ckpt", str(tmp_path), "--prompt", "hi", "--temperature", "0"]
    assert runner.invoke(notes_app, args).exit_code == 0
    assert runner.invoke(notes_app, [*args, "--system", "Be terse."]).exit_code == 0
    first, second = calls
    assert first["system"] is None and first["system_file"] == PERSONA_FILE
    assert first["prompt"] == "hi" and first["temperature"] == 0.0 and first["top_k"] == 50
    assert second["system"] == "Be terse." and second["system_file"] is None
